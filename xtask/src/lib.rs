//! The parts of fathom's developer tasks that other crates use too: the container image
//! builder (`cargo xtask image`, and the integration test that runs the image in a real
//! dockerd).

pub mod image;
