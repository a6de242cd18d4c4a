"""sb3-ml3: Meta-Learning via Learned Loss (ML3) for Stable-Baselines3 and PyTorch.

Importing the package registers its goal-conditioned Gymnasium environments
(``PointmassGoal-v0``, ``ReacherGoal-v0``, ``AntGoal-v0``, ``MountainCarGoal-v0``, ...).
"""

from sb3_ml3.meta_loss import InputSpec, MetaLoss, MetaLossSpecError

__version__ = "0.1.0"

from sb3_ml3 import envs as _envs  # noqa: E402,F401  (registers the environments)
from sb3_ml3.ml3 import ML3, ML3Policy  # noqa: E402

__all__ = ["ML3", "ML3Policy", "InputSpec", "MetaLoss", "MetaLossSpecError", "__version__"]
