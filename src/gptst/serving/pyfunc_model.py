"""The code MLflow runs to build a forecaster's pyfunc model ("models from code"): the model is
built here, not unpickled, so loading a registered model runs no pickle."""

from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from gptst.serving import BUNDLE_ARTIFACT, forecast_frame


class ForecasterPyfunc(PythonModel):
    """The pyfunc wrapper of a forecaster bundle (see :mod:`gptst.serving`)."""

    def load_context(self, context):
        from gptst.models.forecaster_bundle import load_forecaster

        self.bundle = load_forecaster(context.artifacts[BUNDLE_ARTIFACT], "cpu")  # torch.load(weights_only=True)

    # No type hints: MLflow would read them as a schema; the signature is the model's.
    def predict(self, context, model_input, params=None):
        return forecast_frame(self.bundle, model_input)


set_model(ForecasterPyfunc())
