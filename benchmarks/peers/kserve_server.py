"""KServe's Python model server (v2 protocol) serving the same package."""

import sys

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

from eodeploy.runtime.predictor import Predictor


class EuroSAT(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        self.model = Predictor(self.path)
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers=None, response_headers=None):  # type: ignore[no-untyped-def]
        x = payload.inputs[0].as_numpy()
        proba = self.model.predict_proba(x)
        out = InferOutput(name="probabilities", shape=list(proba.shape), datatype="FP32")
        out.set_data_from_numpy(proba, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id or "")


if __name__ == "__main__":
    ModelServer(http_port=int(sys.argv[2]), grpc_port=int(sys.argv[3]), workers=1).start(
        [EuroSAT(sys.argv[4], sys.argv[1])]
    )
