//! The mirrors' own rules: a fonts route's CSS API and font files, and map tiles addressed by
//! z/x/y through a template.

pub mod fonts;
pub mod tiles;
