"""Goal-conditioned Gymnasium environments of the ML3 paper (installed as ``sb3_ml3.envs``)."""
