"""AWS Lambda entry point: ``eodeploy.serve.lambda_handler.handler``.

The one place where something is built at import time, on purpose: Lambda imports this module
once per execution environment (its init phase, billed once), so the models load here and every
invocation after it is warm. Settings come from ``EODEPLOY_*`` environment variables.
"""

from eodeploy.serve.aws_lambda import make_handler

handler = make_handler()
