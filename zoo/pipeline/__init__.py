"""Ray and MLflow stages of the project: building the demo zoo (`make_zoo`), materialising the transfer
set (`transfer`), teacher inference (`inference`), soft labels (`soft_labels`), student training
(`training`) and registration (`registration`). Import the submodule you need; this package imports
nothing, so that importing one stage does not start Ray or MLflow for the others."""
