//! Answers over the access records of a trail.
