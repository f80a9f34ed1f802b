"""Export a package to other serving systems' layouts (Triton for now)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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
    shutil.copyfile(pkg.model_path, version_dir / "model.onnx")
    (folder / "config.pbtxt").write_text(triton_config(pkg, max_batch_size))
    (folder / "labels.txt").write_text("\n".join(pkg.spec.class_names) + "\n")
    shutil.copyfile(pkg.path / "item.json", folder / f"item-v{pkg.version}.json")
    return folder
