"""The state database's tables (SQLModel). Alembic migrations in `schema/migrations` create them."""
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, LargeBinary, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

# JSONB on PostgreSQL (indexable, compact), JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class IdCounter(SQLModel, table=True):
    """One counter shared by jobs and workflows (ids are integers, as in PROMINENCE)."""

    __tablename__ = "id_counter"
    name: str = Field(primary_key=True)
    value: int = Field(sa_column=Column(BigInteger, nullable=False))


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_owner_in_queue", "owner", "in_queue"),
        Index("ix_jobs_owner_end_time", "owner", "end_time"),
        Index("ix_jobs_owner_name", "owner", "name"),
        Index("ix_jobs_workflow_id", "workflow_id"),
        Index("ix_jobs_status_priority", "status", "priority", "id"),
        Index("ix_jobs_node_id", "node_id"),
        Index("ix_jobs_end_time", "end_time"),  # the admins' accounting of all users (accounting.py)
    )

    id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    owner: str
    name: str = ""
    status: str
    status_reason: str = ""
    # The normalized description (JobSpec.to_stored()): shown back by detail and resubmitted by clone.
    spec: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    workflow_id: int | None = Field(default=None, sa_column=Column(BigInteger))
    # In the default listing: active jobs, and finished ones kept by leaveInQueue until `remove`.
    in_queue: bool = True
    create_time: int = Field(sa_column=Column(BigInteger, nullable=False))
    start_time: int | None = Field(default=None, sa_column=Column(BigInteger))
    # Set exactly when the job reaches a terminal status.
    end_time: int | None = Field(default=None, sa_column=Column(BigInteger))
    execution: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    # Scheduling: the node running the current attempt; every claim starts a new attempt, and
    # reports from an older attempt are ignored, so no job runs twice at once.
    node_id: int | None = None
    attempt: int = 0
    retries: int = 0  # job-level retries used (infrastructure failures and lost nodes)
    # Copied from the description at submission, so the claim is one indexed SQL statement.
    priority: int = 0
    cpus: int = 1
    memory_mb: int = 1000
    disk_gb: int = 10
    nodes: int = 1  # 0 for totalCpusRange
    autoscale: bool = True  # False for autoScalingType "none": never create capacity for it
    queue_deadline: int | None = Field(default=None, sa_column=Column(BigInteger))  # maximumTimeInQueue
    # policies.placement ({"requirements": {...}, "preferences": {...}}), for the planner's filter and ranking
    placement: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType))
    # While the job waits: why, per candidate cloud ({"local": "quota used", ...}), as the planner last saw it
    wait_reasons: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType))
    # Notifications (gateway/services/notify.py): true from submission until the finished job's
    # deliveries are in the outbox; the submitter's e-mail address, from their token at submission.
    notify_pending: bool = False
    notify_email: str | None = None
    # Workflows (schema/workflowrun.py): the job's name inside its workflow and its factory instance;
    # `blocked` while its dependencies have not completed (the scheduler does not see it); and
    # `wf_pending` from submission until the workflow has counted its end.
    wf_job: str | None = None
    wf_instance: int | None = None
    blocked: bool = False
    wf_pending: bool = False
    parameters: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType))  # a factory instance's
    # The groups of the token that submitted it (its workflow's, for a workflow's jobs), as a JSON list
    # of names: which group areas its artifacts and images may name, and its groups in accounting.
    owner_groups: list[str] = Field(default_factory=list, sa_column=Column(
        JSONType, nullable=False, server_default=text("'[]'")))


class Node(SQLModel, table=True):
    """A machine that runs jobs: a VM on a cloud, or a local node (DESIGN.md 3.4)."""

    __tablename__ = "nodes"
    __table_args__ = (Index("ix_nodes_state", "state"),)

    id: int | None = Field(default=None, primary_key=True)
    cloud: str
    name: str = Field(sa_column=Column(String, nullable=False, unique=True))
    provider_id: str | None = None  # the cloud's id for the VM
    state: str
    state_reason: str = ""
    cpus: int
    memory_mb: int
    disk_gb: int
    site: str
    region: str = ""
    info: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))  # runtimes, cpu
    created_at: float
    ready_at: float | None = None
    last_heartbeat: float | None = None
    idle_since: float | None = None
    ended_at: float | None = None  # when it left the pool (deleted, failed or lost): its spend stops there
    flavour: str = ""
    price: float = 0.0  # per hour, from the cloud's flavour
    address: str = ""  # where it was configured (host name or IP)


class Cloud(SQLModel, table=True):
    """A cloud an admin configured (DESIGN.md 3.4); `schema/cloudspec.py` validates its fields."""

    __tablename__ = "clouds"

    name: str = Field(primary_key=True)
    provider: str  # the libcloud provider name: local, ssh, ec2, openstack, gce, azure_arm...
    driver_args: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    create_options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    region: str = ""
    site: str = ""
    image: str = ""
    connection: str = "ssh"  # how nodes are configured: ssh, or local (this machine)
    ssh_user: str = "root"
    ssh_port: int = 22
    node_root: str = "/var/lib/prominence-node"
    install_packages: bool = True  # the playbook installs podman and what jobs' sandboxes need
    flavours: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSONType, nullable=False))
    max_instances: int | None = None
    max_cpus: int | None = None
    max_memory_mb: int | None = None
    min_nodes: int = 0  # kept up even without work (a static pool's hosts)
    idle_timeout: float = 600.0
    create_timeout: float = 600.0
    running_timeout: float = 600.0
    configure_timeout: float = 600.0
    max_booting: int = 4
    enabled: bool = True
    credentials: str | None = None  # Fernet token of the JSON credentials (schema/secrets.py); write-only
    failures: list[float] = Field(default_factory=list, sa_column=Column(JSONType, nullable=False))
    created_at: float
    updated_at: float


# Key-value store keys compare byte by byte on both databases (SQLite's default BINARY collation;
# "C" on PostgreSQL), i.e. in code point order, so that a prefix is one index range.
KvKeyType = String().with_variant(String(collation="C"), "postgresql")


class KvPair(SQLModel, table=True):
    """One key of a user's key-value store (DESIGN.md 3.6; gateway/services/kv.py has the rules)."""

    __tablename__ = "kv_pairs"

    owner: str = Field(sa_column=Column(KvKeyType, primary_key=True))
    key: str = Field(sa_column=Column(KvKeyType, primary_key=True))  # "/a/b": a leading slash, then the path
    value: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # any bytes, 1 to 16,000
    updated_at: float


jobs = Job.__table__
nodes = Node.__table__
id_counter = IdCounter.__table__
clouds = Cloud.__table__
kv_pairs = KvPair.__table__


class Workflow(SQLModel, table=True):
    """A workflow (reference section 4): its description, its status, and its jobs' progress
    (schema/workflowrun.py keeps `state`: per job, schema.dag.JobProgress's stored counts)."""

    __tablename__ = "workflows"
    __table_args__ = (
        Index("ix_workflows_owner_in_queue", "owner", "in_queue"),
        Index("ix_workflows_status", "status"),
    )

    id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    owner: str
    name: str = ""
    status: str
    status_reason: str = ""
    spec: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))  # WorkflowSpec.to_stored()
    state: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    total: int = Field(sa_column=Column(BigInteger, nullable=False))  # job instances in all
    in_queue: bool = True
    create_time: int = Field(sa_column=Column(BigInteger, nullable=False))
    start_time: int | None = Field(default=None, sa_column=Column(BigInteger))
    end_time: int | None = Field(default=None, sa_column=Column(BigInteger))
    rerun_of: int | None = Field(default=None, sa_column=Column(BigInteger))  # the workflow it re-runs
    # The submitter's token's groups, given to every job of the workflow (also those created later).
    owner_groups: list[str] = Field(default_factory=list, sa_column=Column(
        JSONType, nullable=False, server_default=text("'[]'")))
    # Notifications (gateway/services/notify.py), as a job's: true from submission until the finished
    # workflow's deliveries are in the outbox; the submitter's e-mail address (also for its jobs'
    # `jobFinished` e-mails, the jobs being created later, without the submitter's token).
    notify_pending: bool = False
    notify_email: str | None = None


workflows = Workflow.__table__
# The workflow engine's work: finished jobs of workflows not counted yet (only those in the index).
Index("ix_jobs_wf_pending", jobs.c.id, sqlite_where=jobs.c.wf_pending.is_(True),
      postgresql_where=jobs.c.wf_pending.is_(True))
Index("ix_jobs_workflow_job", jobs.c.workflow_id, jobs.c.wf_job, jobs.c.status)


class NotificationDelivery(SQLModel, table=True):
    """The notifications outbox (gateway/services/notify.py): one row per notification of a
    finished job (or workflow), written in the transaction that clears its `notify_pending`, and
    updated as it is sent (state pending -> sent | failed | skipped)."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        Index("ix_notification_deliveries_subject", "subject", "subject_id", "seq", unique=True),
        Index("ix_notification_deliveries_due", "state", "next_attempt_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    subject: str  # what finished: "job" (or "workflow")
    subject_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    seq: int  # its place in the subject's notifications list
    event: str  # jobFinished, workflowFinished
    owner: str
    kind: str  # email, webhook
    target: str  # the e-mail address or the webhook URL ("" when there is none)
    payload: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))  # what is sent, bar the delivery id
    state: str = "pending"
    attempts: int = 0
    next_attempt_at: float  # due time; while a sender holds it, the end of its lease
    last_error: str = ""
    created_at: float
    sent_at: float | None = None


notification_deliveries = NotificationDelivery.__table__
# Finished jobs whose notifications are not in the outbox yet: only those rows are in the index.
Index("ix_jobs_notify_pending", jobs.c.id, sqlite_where=jobs.c.notify_pending.is_(True),
      postgresql_where=jobs.c.notify_pending.is_(True))
Index("ix_workflows_notify_pending", workflows.c.id, sqlite_where=workflows.c.notify_pending.is_(True),
      postgresql_where=workflows.c.notify_pending.is_(True))


class DataObject(SQLModel, table=True):
    """An uploaded object (gateway/services/data.py): the index of the store's `uploads/...` keys,
    so that listings are one indexed query and a checksum is kept with each object."""

    __tablename__ = "data_objects"
    __table_args__ = (Index("ix_data_objects_area_name", "area", "name"),)

    key: str = Field(primary_key=True)  # the store's key: uploads/users/<user>/<name>, uploads/groups/<group>/...
    area: str  # users/<user> or groups/<group>: who may see it
    name: str  # as users name it: <name> in a user's area, <group>/<path> in a group's
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    sha256: str
    modified: float
    uploader: str


class StorageCredential(SQLModel, table=True):
    """The object store's keys (S3 access key and secret), sealed with the CredentialBox; write-only."""

    __tablename__ = "storage_credentials"

    name: str = Field(primary_key=True)  # "default"
    credentials: str  # Fernet token of the JSON credentials
    updated_at: float


data_objects = DataObject.__table__
storage_credentials = StorageCredential.__table__
