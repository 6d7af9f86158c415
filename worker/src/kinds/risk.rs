//! The `risk` kind on a worker. Not written yet.

use crate::handler::Registry;

pub(crate) fn register(_registry: &mut Registry) {}
