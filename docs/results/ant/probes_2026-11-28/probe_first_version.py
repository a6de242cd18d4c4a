"""AntGoal meta-training variants: meta-train progress, meta-validation, checkpoints for resuming."""
import json, os, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from sb3_ml3.compare import make_train_env, policy_kwargs_for, settings_for
from sb3_ml3.ml3 import ML3, MetaValidationCallback

name, steps, overrides = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
out = "/tmp/antx2"
val = json.loads(sys.argv[4]) if len(sys.argv) > 4 else dict(eval_freq=100_000, eval_at_updates=(2, 5, 10), n_goals=10)
s = settings_for("ml3", "AntGoal-v0", {"meta_train": overrides})
env = make_train_env("AntGoal-v0", s["n_envs"], 0, split="train", normalize=False)
ckpt = f"{out}/{name}_model.zip"
if os.path.exists(ckpt):
    model = ML3.load(ckpt, env=env)
    print("resumed at", model.num_timesteps, flush=True)
else:
    model = ML3("MlpPolicy", env, meta_train=True, seed=0, policy_kwargs=dict(policy_kwargs_for([64, 64]), **json.loads(os.environ.get("POLICY_KW", "{}"))), **s["meta_train"])
orig = model.train
hist, t0 = {}, time.time()
def train():
    age = model._n_iterations % (model.policy_reset_interval or 10**9)
    if model._task_rewards:
        hist.setdefault(age, []).append(float(np.stack(model._task_rewards).sum(0).mean()))
    orig()
    if model._n_iterations % 50 == 0:
        early = np.mean(sum((hist.get(a, [])[-4:] for a in range(0, 3)), []) or [np.nan])
        R = model.policy_reset_interval or 25
        late = np.mean(sum((hist.get(a, [])[-4:] for a in range(R - 5, R)), []) or [np.nan])
        mid = np.mean(sum((hist.get(a, [])[-4:] for a in range(R // 2 - 2, R // 2 + 3)), []) or [np.nan])
        print(f"{name} it {model._n_iterations} steps {model.num_timesteps} train-progress age0-2 {early:.2f} mid {mid:.2f} late {late:.2f} "
              f"std {torch.exp(model.policy.log_std).mean().item():.3f} {time.time()-t0:.0f}s", flush=True)
model.train = train
class Val(MetaValidationCallback):
    def _validate(self):
        super()._validate()
        model.save(ckpt)
        model.save_meta_loss(f"{out}/{name}_last.zip")
        with open(f"{out}/{name}_val.jsonl", "a") as f:
            f.write(json.dumps({"steps": self.history[-1][0], "metric": self.history[-1][1]}) + "\n")
        print(f"{name} VAL {self.history[-1]} best {self.best_metric:.2f} {time.time()-t0:.0f}s", flush=True)
cb = Val("AntGoal-v0", seed=0, verbose=0, best_meta_loss_path=f"{out}/{name}_best.zip", **val)
model.learn(steps, callback=cb, reset_num_timesteps=not os.path.exists(ckpt))
model.save(ckpt); model.save_meta_loss(f"{out}/{name}_last.zip")
print("history", cb.history, "best", cb.best_metric, cb.best_timesteps)
