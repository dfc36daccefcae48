"""Anomaly detection: password spray, credential stuffing, distributed brute force,
new network for a user, plaintext login attempts, high-volume fetch, mass delete."""

from gateway.anomaly.model import ANOMALY_KINDS, Anomaly, AnomalyAction, AnomalyKind

__all__ = ["ANOMALY_KINDS", "Anomaly", "AnomalyAction", "AnomalyKind", "AnomalyDetector"]


def __getattr__(name: str):
    # Imported lazily: the detector depends on gateway.limits, which depends on this
    # package's model; an eager import here would be a cycle.
    if name == "AnomalyDetector":
        from gateway.anomaly.detectors import AnomalyDetector

        return AnomalyDetector
    raise AttributeError(name)
