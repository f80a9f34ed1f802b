"""Scene inference: whole scenes to georeferenced class maps, areas and polygons."""

from eodeploy.geo.predict import OutputExistsError, predict_scene
from eodeploy.geo.sources import Scene, open_scene

__all__ = ["OutputExistsError", "Scene", "open_scene", "predict_scene"]
