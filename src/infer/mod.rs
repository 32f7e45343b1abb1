//! What a trained model does with text: continue it ([`sample`]) and score it
//! ([`eval`]).
pub mod eval;
pub mod sample;
