//! Ids and file names that hold anything (issue 14.4, 14.5).
