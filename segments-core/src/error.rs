//! The one error type of segments. Every variant knows its SQLSTATE, so a
//! user (or a client library) can tell a bad definition from a missing
//! column from a refused delete without parsing messages. The extension
//! raises these as Postgres errors (`pg::error` there).

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SegmentsError {
    /// A definition or argument that is malformed (22023).
    #[error("{0}")]
    InvalidParameter(String),
    /// A column of a type segments does not evaluate (42804).
    #[error("{0}")]
    DatatypeMismatch(String),
    /// A column that does not exist (42703).
    #[error("{0}")]
    UndefinedColumn(String),
    /// An entity, related table or segment that does not exist (42P01).
    #[error("{0}")]
    UndefinedTable(String),
    /// A named object that does not exist, e.g. a segment id given to a function (42704).
    #[error("{0}")]
    UndefinedObject(String),
    /// A name that is already taken (42710).
    #[error("{0}")]
    DuplicateObject(String),
    /// Something else depends on the object (2BP01).
    #[error("{0}")]
    DependentObjects(String),
    /// The caller's role may not do this (42501).
    #[error("{0}")]
    InsufficientPrivilege(String),
    /// A configured limit would be passed (54000).
    #[error("{0}")]
    LimitExceeded(String),
    /// The object is busy, e.g. a refresh is already running (55006).
    #[error("{0}")]
    ObjectInUse(String),
    /// The request contradicts the object's state (55000).
    #[error("{0}")]
    InvalidState(String),
    /// Something this setup cannot do, e.g. live capture of a Citus
    /// distributed table (0A000).
    #[error("{0}")]
    FeatureNotSupported(String),
    /// A change asked of a read-only server: a hot standby (25006).
    #[error("{0}")]
    ReadOnly(String),
}

/// An error with a hint for the user ("Perhaps you meant ...").
#[derive(Debug, Clone, PartialEq)]
pub struct Reported {
    pub error: SegmentsError,
    pub hint: Option<String>,
}

impl SegmentsError {
    /// The five-character SQLSTATE: the one place a kind of error gets its code.
    pub fn code(&self) -> &'static str {
        match self {
            SegmentsError::InvalidParameter(_) => "22023",
            SegmentsError::DatatypeMismatch(_) => "42804",
            SegmentsError::UndefinedColumn(_) => "42703",
            SegmentsError::UndefinedTable(_) => "42P01",
            SegmentsError::UndefinedObject(_) => "42704",
            SegmentsError::DuplicateObject(_) => "42710",
            SegmentsError::DependentObjects(_) => "2BP01",
            SegmentsError::InsufficientPrivilege(_) => "42501",
            SegmentsError::LimitExceeded(_) => "54000",
            SegmentsError::ObjectInUse(_) => "55006",
            SegmentsError::InvalidState(_) => "55000",
            SegmentsError::FeatureNotSupported(_) => "0A000",
            SegmentsError::ReadOnly(_) => "25006",
        }
    }

    /// A segment id handed to a function that names no segment: 42704, as
    /// for any object a function is handed.
    pub fn no_such_segment(id: impl std::fmt::Display) -> Self {
        SegmentsError::UndefinedObject(format!("segment {id} does not exist"))
    }

    /// A segment a definition reads that does not exist: 42P01, as for
    /// anything a definition names (docs/reference.md: unknown entity, related table or
    /// segment); `path` is where in the definition.
    pub fn missing_segment_reference(path: &str, reference: impl std::fmt::Display) -> Self {
        SegmentsError::UndefinedTable(format!(
            "{path}.segment: segment {reference} does not exist"
        ))
    }

    /// The same error, its message prefixed with where in a definition it
    /// arose (`rules[0].where.related: ...`).
    pub fn at(self, path: &str) -> Self {
        let prefix = |message: String| format!("{path}: {message}");
        match self {
            SegmentsError::InvalidParameter(m) => SegmentsError::InvalidParameter(prefix(m)),
            SegmentsError::DatatypeMismatch(m) => SegmentsError::DatatypeMismatch(prefix(m)),
            SegmentsError::UndefinedColumn(m) => SegmentsError::UndefinedColumn(prefix(m)),
            SegmentsError::UndefinedTable(m) => SegmentsError::UndefinedTable(prefix(m)),
            SegmentsError::UndefinedObject(m) => SegmentsError::UndefinedObject(prefix(m)),
            SegmentsError::DuplicateObject(m) => SegmentsError::DuplicateObject(prefix(m)),
            SegmentsError::DependentObjects(m) => SegmentsError::DependentObjects(prefix(m)),
            SegmentsError::InsufficientPrivilege(m) => {
                SegmentsError::InsufficientPrivilege(prefix(m))
            }
            SegmentsError::LimitExceeded(m) => SegmentsError::LimitExceeded(prefix(m)),
            SegmentsError::ObjectInUse(m) => SegmentsError::ObjectInUse(prefix(m)),
            SegmentsError::InvalidState(m) => SegmentsError::InvalidState(prefix(m)),
            SegmentsError::FeatureNotSupported(m) => SegmentsError::FeatureNotSupported(prefix(m)),
            SegmentsError::ReadOnly(m) => SegmentsError::ReadOnly(prefix(m)),
        }
    }

    pub fn with_hint(self, hint: Option<String>) -> Reported {
        Reported { error: self, hint }
    }
}

impl From<SegmentsError> for Reported {
    fn from(error: SegmentsError) -> Self {
        Reported { error, hint: None }
    }
}

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)
    }
}

pub type Result<T, E = Reported> = std::result::Result<T, E>;

/// A malformed definition or argument at `path` (22023): the message names
/// where in the definition the problem is.
pub fn invalid(path: &str, message: impl std::fmt::Display) -> SegmentsError {
    SegmentsError::InvalidParameter(format!("{path}: {message}"))
}
