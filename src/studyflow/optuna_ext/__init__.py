"""What studyflow adds to Optuna: the server's journal (which applies its own writes), a faster TPE,
one-record random search, a grid search without quadratic tells, samplers and pruners from a
study file, warm-start history."""

from studyflow.optuna_ext._grid import GridInOneRecord
from studyflow.optuna_ext._grid import IncrementalGridSampler
from studyflow.optuna_ext._journal import ServerJournalStorage
from studyflow.optuna_ext._journal import SingleWriterJournal
from studyflow.optuna_ext._journal_check import JournalScan
from studyflow.optuna_ext._journal_check import repair as repair_journal
from studyflow.optuna_ext._journal_check import scan as scan_journal
from studyflow.optuna_ext._random_ask import RandomInOneRecord
from studyflow.optuna_ext._space import HISTORY_FREE_SAMPLERS
from studyflow.optuna_ext._space import check_sampler_options
from studyflow.optuna_ext._space import distribution
from studyflow.optuna_ext._space import distributions
from studyflow.optuna_ext._space import grid_size
from studyflow.optuna_ext._space import make_pruner
from studyflow.optuna_ext._space import make_sampler
from studyflow.optuna_ext._tpe import CachedFitTPESampler
from studyflow.optuna_ext._warm_start import warm_trials

__all__ = [
    "CachedFitTPESampler",
    "GridInOneRecord",
    "HISTORY_FREE_SAMPLERS",
    "IncrementalGridSampler",
    "JournalScan",
    "RandomInOneRecord",
    "ServerJournalStorage",
    "SingleWriterJournal",
    "check_sampler_options",
    "distribution",
    "distributions",
    "grid_size",
    "make_pruner",
    "make_sampler",
    "repair_journal",
    "scan_journal",
    "warm_trials",
]
