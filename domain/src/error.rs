//! What the domain says when it says no. Each variant has a stable code.

/// Why a command was refused by the domain (not by the store or the wire).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A business rule said no; `code` is stable (`incident_already_resolved`).
    #[error("{message}")]
    Rejected { code: &'static str, message: String },
    /// The actor may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The aggregate does not exist (or is gone).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A field is malformed; `field` names it.
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
}

impl DomainError {
    pub fn rejected(code: &'static str, message: impl Into<String>) -> Self {
        DomainError::Rejected {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        DomainError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The stable machine-readable code of the error.
    pub fn code(&self) -> &'static str {
        match self {
            DomainError::Rejected { code, .. } => code,
            DomainError::Forbidden(_) => "forbidden",
            DomainError::NotFound(_) => "not_found",
            DomainError::Invalid { .. } => "invalid",
        }
    }
}
