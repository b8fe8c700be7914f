"""edgelab's learning core, shared by the IMA and the SRO and usable offline: time
alignment (align), metric selection for a continuous KPI (select), forecasting H
seconds ahead with an honest time-ordered evaluation (forecast), the chosen
forecaster for live data (model). numpy and
scikit-learn only; no network and no files (callers pass open streams to tables)."""

from .align import Dataset, align, from_table, infer_step
from .errors import LearnError
from .forecast import Evaluation, evaluate, nmae
from .model import Forecaster
from .select import DEFAULT_METHOD, METHODS, Selection, select
from .tables import Table, read_csv, read_parquet

__all__ = ["DEFAULT_METHOD", "METHODS", "Dataset", "Evaluation", "Forecaster", "LearnError", "Selection",
           "Table", "align", "evaluate", "from_table", "infer_step", "nmae", "read_csv", "read_parquet", "select"]
