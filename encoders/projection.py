"""A trained map from spectrum features to a 256-d L2-normalised embedding.

The hand-weighted feature vector (v1) treats every feature as equally meaningful within its
block; a projection learnt by metric learning (:mod:`faultline.encoders.training`) decides
which directions separate fault types across bearings. It is a small fixed graph

    standardise (mean, 1/std) -> x @ W1 + b1 -> [tanh -> @ W2 + b2] -> L2 normalise

kept in two equivalent forms: numpy arrays (:meth:`Projection.apply`, the reference the
trainer and the tests use) and an ONNX model (:meth:`Projection.to_onnx`) that onnxruntime
runs in the agent. The export is deterministic (no timestamps, fixed producer), so the same
parameters give the same bytes and the same sha256: the sha256 is the model's identity in
``models/spectrum.json`` and in every library built with it.

:class:`ProjectionSet` holds one projection per view and either runs the shipped ONNX
files (verified against the manifest before use) or in-memory projections trained inside
an evaluation fold.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

__all__ = [
    "INPUT_NAME",
    "MANIFEST_NAME",
    "OUTPUT_NAME",
    "NumpyRunner",
    "OnnxRunner",
    "Projection",
    "ProjectionError",
    "ProjectionSet",
    "Runner",
    "load_manifest",
]

F32 = npt.NDArray[np.float32]
View = Literal["window", "spectrum"]

INPUT_NAME: Final = "features"
OUTPUT_NAME: Final = "embedding"
MANIFEST_NAME: Final = "spectrum.json"
NORM_EPS: Final = 1e-12
"""Floor under the squared norm, so an all-zero row maps to zeros instead of NaN."""
OPSET: Final = 17
IR_VERSION: Final = 8
"""IR 8 / opset 17: loadable by every onnxruntime since 1.14 (the project pins >= 1.17)."""
PRODUCER: Final = "faultline.encoders.projection"


class ProjectionError(RuntimeError):
    """A projection file is missing, corrupt or not the one the manifest pins."""


@dataclass(frozen=True, eq=False)
class Projection:
    """Parameters of the feature -> embedding map (float32, as the ONNX graph holds them).

    ``w2``/``b2`` are absent for a linear projection; then ``w1`` maps straight to the
    embedding. ``meta`` is free-form provenance (method, hyper-parameters) for manifests.
    """

    mean: F32
    inv_std: F32
    w1: F32
    b1: F32
    w2: F32 | None = None
    b2: F32 | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = self.mean.shape[0]
        if (
            self.inv_std.shape != (f,)
            or self.w1.shape[0] != f
            or self.b1.shape != (self.w1.shape[1],)
        ):
            raise ValueError("projection parameter shapes disagree")
        if (self.w2 is None) != (self.b2 is None):
            raise ValueError("w2 and b2 come together")
        if self.w2 is not None and (
            self.w2.shape[0] != self.w1.shape[1]
            or self.b2 is None
            or self.b2.shape != (self.w2.shape[1],)
        ):
            raise ValueError("second layer shapes disagree with the first")

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    @property
    def dim(self) -> int:
        return int(self.w1.shape[1] if self.w2 is None else self.w2.shape[1])

    def apply(self, features: npt.ArrayLike) -> F32:
        """Numpy reference path: (n, F) features -> (n, dim) float32 unit rows.

        Computed in float32 step by step as the ONNX graph does, so both paths agree to
        float rounding (tested to 1e-5).
        """
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected (n, {self.n_features}) features, got {x.shape}")
        h: npt.NDArray[np.floating[Any]] = ((x - self.mean) * self.inv_std) @ self.w1 + self.b1
        if self.w2 is not None and self.b2 is not None:
            h = np.tanh(h) @ self.w2 + self.b2
        sq = np.maximum(np.sum(h * h, axis=1, keepdims=True), np.float32(NORM_EPS))
        out: F32 = (h / np.sqrt(sq)).astype(np.float32)
        return out

    def to_onnx(self) -> bytes:
        """The same map as a self-contained ONNX model (deterministic bytes)."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        f, d = self.n_features, self.dim
        inits = [
            numpy_helper.from_array(self.mean, "mean"),
            numpy_helper.from_array(self.inv_std, "inv_std"),
            numpy_helper.from_array(self.w1, "w1"),
            numpy_helper.from_array(self.b1, "b1"),
            numpy_helper.from_array(np.array([NORM_EPS], dtype=np.float32), "eps"),
        ]
        nodes = [
            helper.make_node("Sub", [INPUT_NAME, "mean"], ["centred"]),
            helper.make_node("Mul", ["centred", "inv_std"], ["standard"]),
            helper.make_node("MatMul", ["standard", "w1"], ["h1_mm"]),
            helper.make_node("Add", ["h1_mm", "b1"], ["h1"]),
        ]
        last = "h1"
        if self.w2 is not None and self.b2 is not None:
            inits += [
                numpy_helper.from_array(self.w2, "w2"),
                numpy_helper.from_array(self.b2, "b2"),
            ]
            nodes += [
                helper.make_node("Tanh", ["h1"], ["a1"]),
                helper.make_node("MatMul", ["a1", "w2"], ["h2_mm"]),
                helper.make_node("Add", ["h2_mm", "b2"], ["h2"]),
            ]
            last = "h2"
        nodes += [
            helper.make_node("ReduceSumSquare", [last], ["sq"], axes=[1], keepdims=1),
            helper.make_node("Max", ["sq", "eps"], ["sq_floor"]),
            helper.make_node("Sqrt", ["sq_floor"], ["norm"]),
            helper.make_node("Div", [last, "norm"], [OUTPUT_NAME]),
        ]
        graph = helper.make_graph(
            nodes,
            "faultline_spectrum_projection",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", f])],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", d])],
            initializer=inits,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER,
            producer_version="1",
            ir_version=IR_VERSION,
        )
        onnx.checker.check_model(model)
        data: bytes = model.SerializeToString()
        return data

    @classmethod
    def from_onnx(cls, model: bytes) -> Projection:
        """Parameters back out of an exported graph (the numpy reference of a shipped file)."""
        import onnx
        from onnx import numpy_helper

        graph = onnx.load_from_string(model).graph
        arrays = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in graph.initializer}
        try:
            return cls(
                mean=arrays["mean"],
                inv_std=arrays["inv_std"],
                w1=arrays["w1"],
                b1=arrays["b1"],
                w2=arrays.get("w2"),
                b2=arrays.get("b2"),
            )
        except KeyError as exc:
            raise ProjectionError(f"not a faultline projection graph: no {exc}") from None

    def sha256(self) -> str:
        return hashlib.sha256(self.to_onnx()).hexdigest()

    def save_npz(self, path: Path) -> None:
        """Parameters for inspection and re-export (the ONNX file is what ships)."""
        arrays: dict[str, Any] = {
            "mean": self.mean,
            "inv_std": self.inv_std,
            "w1": self.w1,
            "b1": self.b1,
            "meta": np.array(json.dumps(dict(self.meta), sort_keys=True)),
        }
        if self.w2 is not None and self.b2 is not None:
            arrays |= {"w2": self.w2, "b2": self.b2}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        Path(path).write_bytes(buf.getvalue())


class Runner(Protocol):
    """Something that maps (n, F) float32 features to (n, dim) unit embeddings."""

    @property
    def n_features(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def sha256(self) -> str: ...

    def __call__(self, features: F32) -> F32: ...


class NumpyRunner:
    """Runs a :class:`Projection` in numpy (evaluation folds: no graph to build)."""

    def __init__(self, projection: Projection) -> None:
        self.projection = projection
        self._sha: str | None = None

    @property
    def n_features(self) -> int:
        return self.projection.n_features

    @property
    def dim(self) -> int:
        return self.projection.dim

    @property
    def sha256(self) -> str:
        if self._sha is None:
            self._sha = self.projection.sha256()
        return self._sha

    def __call__(self, features: F32) -> F32:
        return self.projection.apply(features)


def _session_options(threads: int) -> ort.SessionOptions:
    """One thread per session by default: the graph is two small matmuls, and pipeline
    workers scale by running sessions side by side rather than by splitting one batch."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


class OnnxRunner:
    """One onnxruntime session over a projection graph; one ``run`` call per batch."""

    def __init__(self, model: bytes, *, threads: int = 1, where: str = "<memory>") -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self._sha = hashlib.sha256(model).hexdigest()
        try:
            self._session = ort.InferenceSession(
                model, sess_options=_session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ProjectionError(f"{where}: onnxruntime cannot load it: {exc}") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
            raise ProjectionError(f"{where}: expected input {INPUT_NAME!r}, output {OUTPUT_NAME!r}")
        self._n_features = int(inputs[0].shape[1])
        self._dim = int(outputs[0].shape[1])

    @property
    def n_features(self) -> int:
        return self._n_features

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def sha256(self) -> str:
        return self._sha

    def __call__(self, features: F32) -> F32:
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected (n, {self.n_features}) features, got {x.shape}")
        out: F32 = self._session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        return out


def load_manifest(directory: Path | None = None) -> dict[str, Any]:
    """``spectrum.json`` from ``directory``, else the one shipped in ``faultline.models``."""
    try:
        if directory is None:
            text = (files("faultline.models") / MANIFEST_NAME).read_text(encoding="utf-8")
        else:
            text = (Path(directory) / MANIFEST_NAME).read_text(encoding="utf-8")
    except OSError as exc:
        where = directory or "faultline.models"
        raise ProjectionError(f"no spectrum model manifest {MANIFEST_NAME} in {where}") from exc
    manifest: dict[str, Any] = json.loads(text)
    return manifest


def _read_verified(name: str, expected: str, directory: Path | None) -> bytes:
    """Read a model file once and check its sha256, so what is hashed is what is loaded."""
    where = f"faultline.models/{name}" if directory is None else str(Path(directory) / name)
    try:
        if directory is None:
            data = (files("faultline.models") / name).read_bytes()
        else:
            data = (Path(directory) / name).read_bytes()
    except OSError as exc:
        raise ProjectionError(f"cannot read spectrum model {where}: {exc}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ProjectionError(
            f"spectrum model {where} has sha256 {actual}, but {MANIFEST_NAME} pins "
            f"{expected}: it is not the file the manifest describes (corrupt or replaced)"
        )
    return data


class ProjectionSet:
    """One runner per view, plus what an encoder needs to name the pair in its model id."""

    def __init__(self, runners: Mapping[View, Runner], *, feature_id: str | None = None) -> None:
        missing = {"window", "spectrum"} - set(runners)
        if missing:
            raise ValueError(f"projection set lacks views {sorted(missing)}")
        self.runners: dict[View, Runner] = dict(runners)
        self.feature_id = feature_id
        """Feature-parameter digest the projections were trained on (None: not recorded)."""

    def dim(self, view: View) -> int:
        return self.runners[view].dim

    def n_features(self, view: View) -> int:
        return self.runners[view].n_features

    def __call__(self, view: View, features: F32) -> F32:
        return self.runners[view](features)

    @property
    def sha256(self) -> str:
        """One digest for the pair (window then spectrum model sha256)."""
        text = f"{self.runners['window'].sha256}|{self.runners['spectrum'].sha256}"
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def from_projections(
        cls,
        projections: Mapping[View, Projection],
        *,
        backend: Literal["numpy", "onnx"] = "numpy",
        threads: int = 1,
        feature_id: str | None = None,
    ) -> ProjectionSet:
        """In-memory projections (e.g. retrained inside an evaluation fold)."""
        runners: dict[View, Runner] = {}
        for view, proj in projections.items():
            if backend == "onnx":
                runners[view] = OnnxRunner(proj.to_onnx(), threads=threads, where=f"<{view}>")
            else:
                runners[view] = NumpyRunner(proj)
        return cls(runners, feature_id=feature_id)

    @classmethod
    def load(cls, directory: Path | None = None, *, threads: int = 1) -> ProjectionSet:
        """The models named by ``spectrum.json`` (shipped ones when ``directory`` is None),
        each verified against its sha256 before onnxruntime sees it."""
        manifest = load_manifest(directory)
        runners: dict[View, Runner] = {}
        for view in ("window", "spectrum"):
            spec = manifest["views"][view]
            data = _read_verified(spec["file"], spec["sha256"], directory)
            runner = OnnxRunner(data, threads=threads, where=spec["file"])
            if runner.n_features != int(spec["input"]["shape"][1]) or runner.dim != int(
                spec["output"]["shape"][1]
            ):
                raise ProjectionError(f"{spec['file']}: shapes differ from {MANIFEST_NAME}")
            runners[view] = runner
        return cls(runners, feature_id=str(manifest["features"]["feature_id"]))
