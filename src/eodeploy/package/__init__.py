"""Model packages (ONNX + STAC MLM item.json) and the versioned model repository."""

from eodeploy.package.repository import ModelPackage, ModelRepository, open_package
from eodeploy.package.spec import ClassInfo, ModelSpec, default_classes
from eodeploy.package.validate import mlm_errors, validate_item

__all__ = [
    "ClassInfo",
    "ModelPackage",
    "ModelRepository",
    "ModelSpec",
    "default_classes",
    "mlm_errors",
    "open_package",
    "validate_item",
]
