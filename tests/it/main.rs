//! The one integration test binary (matklad, "Delete Cargo Integration Tests").

mod fixture;
