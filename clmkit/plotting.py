"""loss.png: training and evaluation loss against step, redrawn at each checkpoint."""

import os

from transformers import TrainerCallback


def loss_points(log_history):
    """(train_steps, train_losses, eval_steps, eval_losses) from the Trainer's log history."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evaluation = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    return [p[0] for p in train], [p[1] for p in train], [p[0] for p in evaluation], [p[1] for p in evaluation]


def write_loss_plot(log_history, path):
    import matplotlib

    matplotlib.use("Agg")  # no display on a training box
    import matplotlib.pyplot as plt

    train_x, train_y, eval_x, eval_y = loss_points(log_history)
    fig, ax = plt.subplots(figsize=(8, 5))
    if train_x:
        ax.plot(train_x, train_y, label="train loss", linewidth=1)
    if eval_x:
        ax.plot(eval_x, eval_y, "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    if train_x or eval_x:  # a checkpoint before the first logged loss has nothing to label
        ax.legend()
    # Write beside, then rename: a reader never sees half a picture.
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


class LossPlotCallback(TrainerCallback):
    """Redraws output_dir/loss.png whenever a checkpoint is written and when training ends."""

    def __init__(self, output_dir):
        self.path = os.path.join(output_dir, "loss.png")
        try:
            import matplotlib  # noqa: F401
            self.enabled = True
        except ImportError:  # a missing picture must not cost a night's training
            print("notice: matplotlib is not installed, so loss.png will not be drawn "
                  "(pip install -r requirements.txt)", flush=True)
            self.enabled = False

    def _draw(self, state):
        if self.enabled and state.is_world_process_zero:
            write_loss_plot(state.log_history, self.path)

    def on_save(self, args, state, control, **kwargs):
        self._draw(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._draw(state)
