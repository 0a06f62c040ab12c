"""The code MLflow runs to build a forecaster's pyfunc model ("models from code"): the model
is this instance, not a pickle, so loading a registered model unpickles nothing."""

from mlflow.models import set_model

from gptst.serving import ForecasterPyfunc

set_model(ForecasterPyfunc())
