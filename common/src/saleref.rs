//! `namespace/name` identifies one sale everywhere: in URLs, Redis keys,
//! queue names and the orders ledger.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SaleRef {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SaleRefError {
    #[error("expected <namespace>/<name>, got {0:?}")]
    Shape(String),
    #[error(
        "namespace {0:?} is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)"
    )]
    Namespace(String),
    #[error(
        "name {0:?} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', at most 253)"
    )]
    Name(String),
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_label)
}

impl SaleRef {
    pub fn new(namespace: &str, name: &str) -> Result<Self, SaleRefError> {
        if !is_label(namespace) {
            return Err(SaleRefError::Namespace(namespace.to_owned()));
        }
        if !is_subdomain(name) {
            return Err(SaleRefError::Name(name.to_owned()));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for SaleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for SaleRef {
    type Err = SaleRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ns, name) = s
            .split_once('/')
            .ok_or_else(|| SaleRefError::Shape(s.to_owned()))?;
        Self::new(ns, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let r: SaleRef = "shop/iphone-17.launch".parse().expect("valid ref");
        assert_eq!(r.to_string(), "shop/iphone-17.launch");
        assert!(matches!(
            "shop".parse::<SaleRef>(),
            Err(SaleRefError::Shape(_))
        ));
        assert!(matches!(
            "Shop/x".parse::<SaleRef>(),
            Err(SaleRefError::Namespace(_))
        ));
        assert!(matches!(
            "shop/-x".parse::<SaleRef>(),
            Err(SaleRefError::Name(_))
        ));
        assert!(matches!(
            "shop/a..b".parse::<SaleRef>(),
            Err(SaleRefError::Name(_))
        ));
        assert!(matches!(
            "shop/a/b".parse::<SaleRef>(),
            Err(SaleRefError::Name(_))
        ));
    }
}
