"""The maintenance loop: drift, feedback and live accuracy, retraining triggers, canary rollouts, doctor."""
