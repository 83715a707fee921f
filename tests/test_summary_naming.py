"""The one-line stage summary (log and report.md) names an rm accuracy measured on training
pairs as such."""

from align.stages.summary import metric_parts, one_line


def test_training_pair_accuracy_is_not_called_held_out():
    on_train = {"accuracy": 0.9, "margin": 0.5, "scored_on": "train"}
    assert "accuracy on training pairs 0.900" in metric_parts(on_train)
    assert "margin on training pairs 0.500" in metric_parts(on_train)
    held_out = {**on_train, "scored_on": "eval"}
    assert "accuracy 0.900" in one_line("rm", "rm", held_out, 1.0)
