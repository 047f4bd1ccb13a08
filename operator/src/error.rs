//! What a reconcile can fail on, by the system that failed: the label of
//! the `reconcile_errors` metric and the start of the `ReconcileFailed`
//! event's note come from the variant, not from guessing at the cause.

use flashsale_common::ops::describe;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or did not answer.
    #[error("{}", describe(.0))]
    Kubernetes(anyhow::Error),
    /// Redis did not answer, refused, cannot hold a sale, or lost it.
    #[error("{}", describe(.0))]
    Redis(anyhow::Error),
    #[error("{}", describe(.0))]
    Postgres(anyhow::Error),
    #[error("{}", describe(.0))]
    Rabbitmq(anyhow::Error),
    /// The sale's own settings: its name, its Secret, its TLS material.
    #[error("{}", describe(.0))]
    Config(anyhow::Error),
}

impl Error {
    /// The `outcome` label of `flashsale_operator_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kubernetes(_) => "kubernetes",
            Error::Redis(_) => "redis",
            Error::Postgres(_) => "postgres",
            Error::Rabbitmq(_) => "rabbitmq",
            Error::Config(_) => "config",
        }
    }

    /// `e` with `context` in front, in the same variant.
    pub fn context(self, context: impl std::fmt::Display + Send + Sync + 'static) -> Self {
        match self {
            Error::Kubernetes(e) => Error::Kubernetes(e.context(context)),
            Error::Redis(e) => Error::Redis(e.context(context)),
            Error::Postgres(e) => Error::Postgres(e.context(context)),
            Error::Rabbitmq(e) => Error::Rabbitmq(e.context(context)),
            Error::Config(e) => Error::Config(e.context(context)),
        }
    }

    pub fn config(
        message: impl std::fmt::Display + std::fmt::Debug + Send + Sync + 'static,
    ) -> Self {
        Error::Config(anyhow::Error::msg(message))
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kubernetes(e.into())
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::Redis(e.into())
    }
}

impl From<flashsale_store::redisconn::EvictingRedis> for Error {
    fn from(e: flashsale_store::redisconn::EvictingRedis) -> Self {
        Error::Redis(e.into())
    }
}

impl From<crate::apply::SaleVanished> for Error {
    fn from(e: crate::apply::SaleVanished) -> Self {
        Error::Redis(e.into())
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Postgres(e.into())
    }
}

impl From<lapin::Error> for Error {
    fn from(e: lapin::Error) -> Self {
        Error::Rabbitmq(e.into())
    }
}

impl From<flashsale_common::saleref::SaleRefError> for Error {
    fn from(e: flashsale_common::saleref::SaleRefError) -> Self {
        Error::Config(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_system_has_its_label_and_context_keeps_it() {
        let redis: Error = redis::RedisError::from((redis::ErrorKind::Io, "gone")).into();
        assert_eq!(redis.metric_label(), "redis");
        let redis = redis.context("seeding sale a/b");
        assert_eq!(redis.metric_label(), "redis");
        assert!(
            redis.to_string().starts_with("seeding sale a/b: "),
            "{redis}"
        );
        assert_eq!(
            Error::from(sqlx::Error::PoolTimedOut).metric_label(),
            "postgres"
        );
        assert_eq!(Error::config("no Secret").metric_label(), "config");
    }
}
