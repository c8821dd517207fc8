"""Latency of the original and the slim model where they are deployed, and width tuning.

:func:`measure_latency` times models side by side in every available runtime;
:func:`measure_round_to` and :func:`auto_round_to` choose ``round_to`` by measuring.
"""

from slimfx.bench.latency import compare_latency, measure_latency
from slimfx.bench.round_to import auto_round_to, measure_round_to

__all__ = ["auto_round_to", "compare_latency", "measure_latency", "measure_round_to"]
