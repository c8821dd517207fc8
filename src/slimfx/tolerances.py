"""Every numerical tolerance slimfx checks against, in one place."""

#: Relative error allowed between the slim model and its reference in float64.
FLOAT64_RTOL = 1e-9
#: Relative error allowed for float32 comparisons of the same computation.
FLOAT32_RTOL = 1e-5
#: Relative error allowed between onnxruntime and PyTorch on an exported model.
ONNX_RTOL = 1e-4
