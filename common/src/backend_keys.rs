//! The names under which the data stores' settings travel: the binaries'
//! environment variables, and the keys of the Secrets that hand them to a
//! sale's pods (the chart's, a sale's own, and `<sale>-backends`). Every
//! place that names one uses these; the chart's test holds the chart's
//! Secret to [`SECRET_KEYS`].

pub const REDIS_URL: &str = "REDIS_URL";
pub const AMQP_URL: &str = "AMQP_URL";
pub const DATABASE_URL: &str = "DATABASE_URL";
pub const TLS_CA_PEM: &str = "TLS_CA_PEM";
pub const TLS_CA_FILE: &str = "TLS_CA_FILE";
pub const TLS_CLIENT_CERT_PEM: &str = "TLS_CLIENT_CERT_PEM";
pub const TLS_CLIENT_CERT_FILE: &str = "TLS_CLIENT_CERT_FILE";
pub const TLS_CLIENT_KEY_PEM: &str = "TLS_CLIENT_KEY_PEM";
pub const TLS_CLIENT_KEY_FILE: &str = "TLS_CLIENT_KEY_FILE";
pub const REDIS_TLS_CLIENT_CERT_PEM: &str = "REDIS_TLS_CLIENT_CERT_PEM";
pub const REDIS_TLS_CLIENT_KEY_PEM: &str = "REDIS_TLS_CLIENT_KEY_PEM";
pub const AMQP_TLS_CLIENT_CERT_PEM: &str = "AMQP_TLS_CLIENT_CERT_PEM";
pub const AMQP_TLS_CLIENT_KEY_PEM: &str = "AMQP_TLS_CLIENT_KEY_PEM";
pub const DATABASE_TLS_CLIENT_CERT_PEM: &str = "DATABASE_TLS_CLIENT_CERT_PEM";
pub const DATABASE_TLS_CLIENT_KEY_PEM: &str = "DATABASE_TLS_CLIENT_KEY_PEM";
pub const CONFIRM_TOKEN: &str = "CONFIRM_TOKEN";
pub const REDIS_WAIT_REPLICAS: &str = "REDIS_WAIT_REPLICAS";
/// The key that signs a sale's waiting-room tickets and passes; the
/// operator makes one per sale in `<sale>-backends`.
pub const PASS_KEY: &str = "PASS_KEY";
/// A lottery's seed, kept in `<sale>-backends` until the draw reveals it.
pub const LOTTERY_SEED: &str = "LOTTERY_SEED";

/// Every key a backends Secret may carry.
pub const SECRET_KEYS: [&str; 14] = [
    REDIS_URL,
    AMQP_URL,
    DATABASE_URL,
    TLS_CA_PEM,
    TLS_CLIENT_CERT_PEM,
    TLS_CLIENT_KEY_PEM,
    REDIS_TLS_CLIENT_CERT_PEM,
    REDIS_TLS_CLIENT_KEY_PEM,
    AMQP_TLS_CLIENT_CERT_PEM,
    AMQP_TLS_CLIENT_KEY_PEM,
    DATABASE_TLS_CLIENT_CERT_PEM,
    DATABASE_TLS_CLIENT_KEY_PEM,
    CONFIRM_TOKEN,
    REDIS_WAIT_REPLICAS,
];
