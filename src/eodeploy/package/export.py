"""Export a package to other serving systems' layouts (Triton for now)."""

from __future__ import annotations

import json
from pathlib import Path

from eodeploy._files import atomic_write_bytes
from eodeploy.package.repository import ModelPackage


def triton_config(pkg: ModelPackage, max_batch_size: int = 64) -> str:
    """A Triton ``config.pbtxt`` for the ONNX Runtime backend, with the dynamic batcher on."""
    spec = pkg.spec
    dims = spec.input_shape()[1:]
    fixed = pkg.properties.get("eodeploy:fixed_batch_size")
    mbs = 0 if fixed else max_batch_size
    if fixed:  # a model with a fixed batch axis: Triton wants the full shape and no batching
        dims = [fixed, *dims]
    labels = "labels.txt"
    return "\n".join(
        [
            f'name: "{pkg.name}"',
            'backend: "onnxruntime"',
            f"max_batch_size: {mbs}",
            "input [",
            "  {",
            f'    name: "{spec.input_name}"',
            "    data_type: TYPE_FP32",
            f"    dims: [ {', '.join(map(str, dims))} ]",
            "  }",
            "]",
            "output [",
            "  {",
            f'    name: "{spec.output_name}"',
            "    data_type: TYPE_FP32",
            f"    dims: [ {len(spec.classes)} ]"
            if not fixed
            else f"    dims: [ {fixed}, {len(spec.classes)} ]",
            f'    label_filename: "{labels}"',
            "  }",
            "]",
            *(["dynamic_batching {", "  max_queue_delay_microseconds: 2000", "}"] if mbs else []),
            "instance_group [ { kind: KIND_CPU, count: 1 } ]",
            f'parameters {{ key: "eodeploy_bands" value: {{ string_value: {json.dumps(",".join(spec.bands))} }} }}',
            "",
        ]
    )


def export_triton(pkg: ModelPackage, out: str | Path, max_batch_size: int = 64) -> Path:
    """Write ``<out>/<name>/{config.pbtxt,labels.txt,<version>/model.onnx}``.

    Triton does not run eodeploy's preprocessing: clients must send normalised tensors, as
    recorded in the package's item.json (copied beside the config).
    """
    pkg.verify()
    folder = Path(out) / pkg.name
    version_dir = folder / str(pkg.version)
    version_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(version_dir / "model.onnx", pkg.model_path.read_bytes())
    atomic_write_bytes(folder / "config.pbtxt", triton_config(pkg, max_batch_size).encode())
    atomic_write_bytes(folder / "labels.txt", ("\n".join(pkg.spec.class_names) + "\n").encode())
    atomic_write_bytes(folder / f"item-v{pkg.version}.json", (pkg.path / "item.json").read_bytes())
    return folder
