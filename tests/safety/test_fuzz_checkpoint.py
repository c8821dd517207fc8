"""Fuzzing the checkpoint loader with mutated files.

Real checkpoints (``torch.save``'s zip format and the legacy format of the reference code's
files) are mutated — bits flipped, bytes overwritten, inserted and deleted, the file cut
short — and loaded the way every command loads them (:func:`load_trained_model`:
``load_checkpoint``, the model from the cfg, ``load_into``). Every outcome must be a
model, a :class:`slimfx.SlimfxError` or a ``ValueError``; any other exception, or a load
taking longer than :data:`TIME_LIMIT_S`, fails the test.
"""

from __future__ import annotations

import io
import signal
import zipfile
from contextlib import contextmanager

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from slimfx import SlimfxError
from slimfx.models import VGG
from slimfx.workflow.prune import load_trained_model

#: Seconds one load may take (a healthy load of these files takes about 5 ms).
TIME_LIMIT_S = 5.0
CFG = [4, "M", 6]


class TooSlow(Exception):
    """A load ran past the time limit."""


@contextmanager
def time_limit(seconds: float):
    def expire(signum, frame):
        raise TooSlow(f"the load took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def original(fmt: str) -> bytes:
    torch.manual_seed(0)
    model = VGG(dataset="digits", cfg=CFG)
    ckpt = {"epoch": 2, "best_prec1": 0.5, "cfg": CFG, "state_dict": model.state_dict()}
    buffer = io.BytesIO()
    torch.save(ckpt, buffer, _use_new_zipfile_serialization=fmt == "zip")
    return buffer.getvalue()


ORIGINALS = {fmt: original(fmt) for fmt in ("zip", "legacy")}


def with_pickle(data: bytes, mutate) -> bytes:
    """The zip checkpoint with its pickle (``data.pkl``) mutated, the archive rebuilt valid:
    the unpickler itself gets the damaged bytes."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for info in source.infolist():
            content = source.read(info.filename)
            if info.filename.endswith("data.pkl"):
                content = mutate(content)
            archive.writestr(info.filename, content)
    return out.getvalue()


@st.composite
def mutations(draw):
    """A list of 1-4 edits; positions are fractions of the current length."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "cut"]))
        where = draw(st.floats(0, 1, exclude_max=True))
        if kind == "flip":
            edits.append((kind, where, draw(st.integers(0, 7))))
        elif kind in ("overwrite", "insert"):
            edits.append((kind, where, draw(st.binary(min_size=1, max_size=12))))
        else:
            edits.append((kind, where, draw(st.integers(1, 64))))
    return edits


def apply(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for kind, where, arg in edits:
        if not out:
            break
        at = int(where * len(out))
        if kind == "flip":
            out[at] ^= 1 << arg
        elif kind == "overwrite":
            out[at : at + len(arg)] = arg
        elif kind == "insert":
            out[at:at] = arg
        elif kind == "delete":
            del out[at : at + arg]
        else:
            del out[at:]
    return bytes(out)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "mutated.pth"


def load(path) -> str:
    """``"loaded"`` or the kind of error; anything else propagates and fails the test."""
    with time_limit(TIME_LIMIT_S):
        try:
            load_trained_model(path, dataset="digits")
        except SlimfxError as exc:
            assert str(path) in str(exc), str(exc)  # the message names the file
            return "error"
        except ValueError:
            return "error"
    return "loaded"


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    fmt=st.sampled_from(["zip", "legacy", "zip pickle"]),
    edits=mutations(),
)
def test_mutated_checkpoints_load_or_fail_cleanly(target, fmt, edits):
    if fmt == "zip pickle":
        data = with_pickle(ORIGINALS["zip"], lambda pkl: apply(pkl, edits))
    else:
        data = apply(ORIGINALS[fmt], edits)
    target.write_bytes(data)
    event(f"{fmt}: {load(target)}")


def test_the_unmutated_files_load_and_the_harness_sees_errors(target):
    """The harness itself: originals load, an obviously broken file is an error."""
    rebuilt = with_pickle(ORIGINALS["zip"], lambda pkl: pkl)
    for data in (*ORIGINALS.values(), rebuilt):
        target.write_bytes(data)
        assert load(target) == "loaded"
    target.write_bytes(with_pickle(ORIGINALS["zip"], lambda pkl: pkl[: len(pkl) // 2]))
    assert load(target) == "error"
    with pytest.raises(TooSlow), time_limit(0.05):
        while True:
            pass
