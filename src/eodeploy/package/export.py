"""Export a package to other serving systems' layouts (Triton for now)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from eodeploy._files import atomic_write_bytes
from eodeploy.package.fused import PROBABILITIES, RAW_INPUT, fused_model
from eodeploy.package.repository import ModelPackage

if TYPE_CHECKING:
    import onnx


def triton_config(pkg: ModelPackage, fused: onnx.ModelProto, max_batch_size: int = 64) -> str:
    """A Triton ``config.pbtxt`` for the ONNX Runtime backend, with the dynamic batcher on, for the
    package's fused graph (``package.fused``): raw band values in, probabilities out."""
    spec = pkg.spec
    dims: list[int] = [len(spec.bands), spec.height, spec.width]  # NCHW, whatever the model's layout
    out_dims = [d.dim_value or -1 for d in fused.graph.output[0].type.tensor_type.shape.dim[1:]]
    fixed = pkg.properties.get("eodeploy:fixed_batch_size")
    mbs = 0 if fixed else max_batch_size
    if fixed:  # a model with a fixed batch axis: Triton wants the full shape and no batching
        dims, out_dims = [fixed, *dims], [fixed, *out_dims]
    labels = "labels.txt"
    params = {
        "eodeploy_bands": ",".join(spec.bands),
        "eodeploy_units": spec.units or "as trained (see item.json)",
        "eodeploy_preprocessing": "in the graph: send raw band values, not normalised tensors",
    }
    return "\n".join(
        [
            f'name: "{pkg.name}"',
            'backend: "onnxruntime"',
            f"max_batch_size: {mbs}",
            "input [",
            "  {",
            f'    name: "{RAW_INPUT}"',
            "    data_type: TYPE_FP32",
            f"    dims: [ {', '.join(map(str, dims))} ]",
            "  }",
            "]",
            "output [",
            "  {",
            f'    name: "{PROBABILITIES}"',
            "    data_type: TYPE_FP32",
            f"    dims: [ {', '.join(map(str, out_dims))} ]",
            f'    label_filename: "{labels}"',
            "  }",
            "]",
            *(["dynamic_batching {", "  max_queue_delay_microseconds: 2000", "}"] if mbs else []),
            "instance_group [ { kind: KIND_CPU, count: 1 } ]",
            *(
                f"parameters {{ key: {json.dumps(k)} value: {{ string_value: {json.dumps(v)} }} }}"
                for k, v in params.items()
            ),
            "",
        ]
    )


def export_triton(pkg: ModelPackage, out: str | Path, max_batch_size: int = 64) -> Path:
    """Write ``<out>/<name>/{config.pbtxt,labels.txt,<version>/model.onnx}``.

    ``model.onnx`` is the package's fused graph: its value scaling, layout transpose and softmax
    are in the graph, checked against eodeploy's own preprocessing before anything is written, so
    Triton clients send raw band values (float32 NCHW, the package's bands and units) and get
    probabilities back. The package's item.json is copied beside the config.
    """
    fused = fused_model(pkg)  # verifies the package and checks the graph first
    folder = Path(out) / pkg.name
    version_dir = folder / str(pkg.version)
    version_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(version_dir / "model.onnx", fused.SerializeToString())
    atomic_write_bytes(folder / "config.pbtxt", triton_config(pkg, fused, max_batch_size).encode())
    atomic_write_bytes(folder / "labels.txt", ("\n".join(pkg.spec.class_names) + "\n").encode())
    atomic_write_bytes(folder / f"item-v{pkg.version}.json", (pkg.path / "item.json").read_bytes())
    return folder
