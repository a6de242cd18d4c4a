"""The ML3 algorithm for Stable-Baselines3 (model-free ML3, paper Algorithms 4 and 5)."""

from sb3_ml3.ml3.callbacks import MetaValidationCallback
from sb3_ml3.ml3.checks import UntrainedMetaLossWarning
from sb3_ml3.ml3.ml3 import DEFAULT_META_INPUTS, ML3, OPTIONAL_META_INPUTS
from sb3_ml3.ml3.policies import ML3Policy, MlpPolicy

__all__ = ["ML3", "ML3Policy", "MlpPolicy", "MetaValidationCallback", "DEFAULT_META_INPUTS", "OPTIONAL_META_INPUTS",
           "UntrainedMetaLossWarning"]
