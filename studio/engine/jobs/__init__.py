"""Jobs: the recipes users write, the pipeline that runs them, run folders and reports.

``recipe`` holds the JSON recipes (`Recipe`, `TrainingRecipe`); ``pipeline`` runs them
(`run_recipe`, `run_training`) into a run folder; ``report`` builds the report from a
run folder's data; ``runs`` reads run folders back for the runs table.
"""
from studio.engine.jobs.pipeline import RunResult, calibration_batches, run_recipe, run_training, train_state_path
from studio.engine.jobs.recipe import (
                                       DataSource,
                                       MeasureOptions,
                                       ModelSource,
                                       Recipe,
                                       TrainingRecipe,
                                       is_training_recipe,
                                       load_recipe,
                                       read_recipe_json,
                                       save_recipe,
)
from studio.engine.jobs.report import write_report
from studio.engine.jobs.runs import RunSummary, pareto_front, read_run

__all__ = ["DataSource", "MeasureOptions", "ModelSource", "Recipe", "RunResult", "RunSummary", "TrainingRecipe",
           "calibration_batches",
           "is_training_recipe", "load_recipe", "pareto_front", "read_recipe_json", "read_run", "run_recipe",
           "run_training", "save_recipe", "train_state_path", "write_report"]
