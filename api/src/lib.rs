//! The FlashSale custom resource: its spec and status, the CRD with its
//! validation rules, and the one definition of a sale's phase.

pub mod sale;
