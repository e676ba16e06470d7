"""phpo.schemas: everything that crosses a boundary (client, server, agent), declared once.

Imports nothing of phpo's and nothing of SQLAlchemy, FastAPI or httpx.
"""

from .api import (
    API_PREFIX,
    ErrorBody,
    Health,
    Me,
    Page,
    Role,
    SteeringIteration,
    TokenCreate,
    TokenCreated,
    TokenInfo,
)
from .artifacts import Artifact, ArtifactKind
from .jobs import (
    AcquireRequest,
    AgentResources,
    CompleteRequest,
    EvaluationSettings,
    FailRequest,
    GPUInfo,
    HeartbeatRequest,
    HeartbeatResponse,
    IntermediateReport,
    Job,
    JobAck,
    JobKind,
    JobPoint,
    PointResult,
    SteeringSettings,
)
from .models import RegisteredModel, model_name
from .points import BestPoint, EvaluationOutput, IntermediateValue, Loss, Point, check_loss
from .search_space import (
    ArrayParam,
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    NormalParam,
    SearchSpace,
    SearchSpaceError,
    parse_search_space,
)
from .segments import Segment
from .states import (
    IllegalTransition,
    JobState,
    NodeState,
    PointState,
    TaskState,
    WorkflowState,
    check_transition,
)
from .tasks import (
    DEFAULT_OPTIMIZER,
    SegmentSearchSpace,
    SegmentSpec,
    Task,
    TaskCounts,
    TaskSpec,
    parse_duration_minutes,
)
from .workflows import Workflow, WorkflowNodeRecord, WorkflowSpec, WorkflowSubmit, workflow_json_schema

__all__ = [name for name in dir() if not name.startswith("_")]
