"""The guide's Flask server (strategy 1), serving the same package: one predict per request, JSON in."""

import sys

import numpy as np
from flask import Flask, jsonify, request

from eodeploy.runtime.predictor import Predictor

model = Predictor(sys.argv[1])
app = Flask(__name__)


@app.route("/v1/models/<name>:predict", methods=["POST"])
def predict(name):  # type: ignore[no-untyped-def]
    instances = np.array(request.get_json()["instances"])
    return jsonify({"predictions": model.predict_proba(instances).tolist()})


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[2]))
