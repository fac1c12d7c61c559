"""Which attention helps on your data, at what cost: segmentors and attention heads trained under one
recipe, several seeds each, measured side by side (``visattn compare``, :func:`visattn.compare`).

An *entry* is a registered segmentor (``fcn``, ``danet``, ``ccnet``, ...) or an attention module of
``visattn.list_attentions()`` as the head of ``attnet`` (entry ``attnet-<name>``). Every entry is
trained on the base config with only ``model.name`` (and ``attnet``'s ``attention``) replaced, for
seeds ``0 .. n-1`` (``train.seed``: the seed orders the samples and draws their augmentation, so every
entry sees the same batches in the same order for a given seed; it also draws the initial weights).
The encoder arguments of the base (``encoder``, ``output_stride``, ``aux``, ... :func:`segmentor_arguments`)
are kept; the base model's own head arguments are kept only by the entry that is the base model.

Output directory (:class:`~visattn.comparison.output.CompareDir`)::

    compare.yaml                 the base recipe and the entries: a re-run continues only the same recipe
    runs/<entry>/seed<k>/        a training run directory (:class:`~visattn.engine.run_dir.RunDir`)
                                 + final.json: the final evaluation, written when the run is complete
    logs/<entry>-seed<k>.log     output of a run trained in a subprocess (``jobs > 1``)
    jobs/<entry>-seed<k>.yaml    the config of a run's batch job (:mod:`~visattn.comparison.jobs`)
    cost.json                    the cost measured, and of what: reporting the same entries again reads it
    report.md, report.json       the table; everything, per seed too
    miou_vs_cost.png, per_class_iou_delta.png, attention_maps.png

Re-running the same comparison skips the complete runs (those with ``final.json``), resumes the
interrupted ones from their latest checkpoint, and restarts those killed before their first one
(deleting only the files of the run layout, :meth:`~visattn.engine.run_dir.RunDir.clear`). A run
folder that is a symbolic link or holds anything else, and a damaged compare.yaml or final.json, are
refused naming the path before anything is trained.

Cost is measured after training, every entry in the same conditions (:mod:`~visattn.comparison.cost`):
parameters; GFLOPs of one forward at the evaluation size; milliseconds per training step (the
trainer's own step, :class:`~visattn.engine.step.TrainingStep`, with the recipe's switches; its first
batch, entries interleaved, median); peak training memory, each entry in a fresh subprocess (CUDA:
``max_memory_allocated``; CPU: the peak RSS), all measured through :mod:`visattn.profiling`.

Statistics (:mod:`~visattn.comparison.stats`): mIoU and mAcc as mean ± standard deviation over the
seeds, and each entry's mIoU difference to the first entry (and to each ``baselines`` entry) with a
Student t confidence interval over the per-seed differences (paired: seed ``k`` of both saw the same data).

One module per concern: :mod:`~visattn.comparison.entries`, :mod:`~visattn.comparison.output`,
:mod:`~visattn.comparison.runner`, :mod:`~visattn.comparison.cost`, :mod:`~visattn.comparison.stats`,
:mod:`~visattn.comparison.report`, :mod:`~visattn.comparison.jobs` (the runs as batch jobs), and
:mod:`~visattn.comparison.pipeline` (:func:`compare`, :func:`emit_jobs`), which puts them together.
"""
from .cost import TIMED_STEPS, WARMUP_STEPS, measure_cost
from .entries import Entry, entry_config, make_entries, segmentor_arguments
from .output import FINAL_METRICS, CompareDir
from .pipeline import compare, emit_jobs
from .report import format_table, query_point
from .runner import RunFailedError, train_run
from .stats import paired_difference, t_quantile

__all__ = ["compare", "emit_jobs", "Entry", "make_entries", "entry_config", "segmentor_arguments", "CompareDir", "train_run",
           "measure_cost", "paired_difference", "t_quantile", "format_table", "query_point", "RunFailedError",
           "FINAL_METRICS", "WARMUP_STEPS", "TIMED_STEPS"]
