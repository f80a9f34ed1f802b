"""LitServe 0.2 serving the same package, with its dynamic batching (max_batch_size 32)."""

import sys

import litserve as ls
import numpy as np

from eodeploy.runtime.predictor import Predictor


class EuroSATAPI(ls.LitAPI):
    def setup(self, device):  # type: ignore[no-untyped-def]
        self.model = Predictor(sys.argv[1])

    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return np.asarray(request["instances"], dtype=np.float32)[0]

    def batch(self, inputs):  # type: ignore[no-untyped-def]
        return np.stack(inputs)

    def predict(self, x):  # type: ignore[no-untyped-def]
        return self.model.predict_proba(x)

    def unbatch(self, output):  # type: ignore[no-untyped-def]
        return list(output)

    def encode_response(self, output):  # type: ignore[no-untyped-def]
        return {"predictions": [output.tolist()]}


if __name__ == "__main__":
    api = EuroSATAPI(max_batch_size=32, batch_timeout=0.005)
    ls.LitServer(api, accelerator="cpu").run(port=int(sys.argv[2]), generate_client_file=False)
