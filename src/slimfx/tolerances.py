"""Every numerical tolerance slimfx checks against, in one place."""

#: Relative error allowed between the slim model and its reference in float64.
FLOAT64_RTOL = 1e-9
#: Relative error allowed for float32 comparisons of the same computation.
FLOAT32_RTOL = 1e-5
#: Relative error allowed between onnxruntime and PyTorch on an exported model.
ONNX_RTOL = 1e-4
#: Relative error allowed between an int8 model in onnxruntime and the float PyTorch model:
#: ``‖int8 − torch‖ / ‖torch‖`` (Frobenius norms over all outputs) on the first calibration
#: images (:mod:`slimfx.export.quantize`). Rounding to 8-bit activations and 7-bit per-channel
#: weights adds noise of a few tenths of a percent of each tensor's range per layer, growing
#: with depth; measured with onnxruntime 1.32: 0.9-1.6% on trained digits VGG-11 (original
#: and 50% slim), 0.8-2.6% on VGG-11/19, ResNet-18 and MobileNetV2 with random BatchNorm
#: statistics, 4-8% on DenseNet-40 (pre-activation BatchNorms stay unfused). 10% admits
#: these and rejects a broken int8 model: on that slim VGG-11, an activation range clipped to a
#: quarter gives 34-52%, one layer's weight scales doubled on an eighth of its channels 20%.
#: Saturating U8S8 kernels (full-range weights on a CPU without VNNI) gave 7% there and cost
#: 4 points of accuracy, under the bound: hence 7-bit weights by default (``reduce_range``).
#: A looser or tighter bound is ``QuantizeOptions(rtol=...)``.
INT8_RTOL = 0.1
