//! The one integration test binary (matklad, "Delete Cargo Integration Tests").

mod check;
mod cli;
mod support;
