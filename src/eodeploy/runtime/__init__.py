"""Running model packages: the one preprocessing path and the predictor."""

from eodeploy.runtime.predictor import Prediction, Predictor, choose_providers
from eodeploy.runtime.preprocess import preprocess

__all__ = ["Prediction", "Predictor", "choose_providers", "preprocess"]
