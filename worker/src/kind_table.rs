//! The [`KindTable`]: the kinds a worker runs, by name, each with its
//! handler (types erased) and, for splittable kinds, its split operations.
//! `KindTable::with_builtins` (in `kinds`) fills one with every kind this
//! crate defines; a service adds its own with [`KindTable::register`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use tandem_shared::kind::KindSpec;
use tandem_shared::{Class, ErrorCode};

use crate::compute::{Compute, Computing, Params};
use crate::context::TaskContext;
use crate::error::TaskError;
use crate::handler::{ErasedHandler, Handler, Prepared, Typed};
use crate::split::{Split, Splitter, Splitting};

/// The kinds a worker can run.
#[derive(Clone, Default)]
pub struct KindTable {
    handlers: HashMap<&'static str, Arc<dyn ErasedHandler>>,
    /// The split operations of splittable kinds.
    splitters: HashMap<&'static str, Arc<dyn Splitter>>,
}

impl fmt::Debug for KindTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

impl KindTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a handler; a later one for the same kind replaces the earlier.
    pub fn register<H: Handler>(&mut self, handler: H) -> &mut Self {
        self.handlers
            .insert(H::Spec::KIND, Arc::new(Typed(handler)));
        self
    }

    /// Adds a compute kind.
    pub fn register_compute<C: Compute>(&mut self, kind: C) -> &mut Self {
        self.register(Computing(Arc::new(kind)))
    }

    /// Adds a splittable compute kind: it runs whole like any kind, and its
    /// `parallel` tasks can be split into shards across workers.
    pub fn register_split<S: Split>(&mut self, kind: S) -> &mut Self
    where
        Params<S>: Clone + Sync,
    {
        let kind = Arc::new(kind);
        self.add_splitter(
            <S::Spec as KindSpec>::KIND,
            Arc::new(Splitting(Arc::clone(&kind))),
        );
        self.register(Computing(kind))
    }

    /// Registered kind names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut kinds: Vec<_> = self.handlers.keys().copied().collect();
        kinds.sort_unstable();
        kinds
    }

    pub(crate) fn add_splitter(&mut self, kind: &'static str, splitter: Arc<dyn Splitter>) {
        self.splitters.insert(kind, splitter);
    }

    /// The split operations of `kind`, when it is splittable.
    pub(crate) fn splitter(&self, kind: &str) -> Option<Arc<dyn Splitter>> {
        self.splitters.get(kind).cloned()
    }

    /// Whether `kind` can run on a CPU worker (unknown kinds: yes, so they
    /// fail as unknown).
    pub fn has_cpu_path(&self, kind: &str) -> bool {
        self.handlers.get(kind).is_none_or(|h| h.cpu_path())
    }

    pub fn class_of(&self, kind: &str) -> Option<Class> {
        self.handlers.get(kind).map(|h| h.class())
    }

    /// Decodes and validates the parameters of a task of `kind`.
    pub fn prepare(
        &self,
        kind: &str,
        params: &[u8],
        ctx: TaskContext,
    ) -> Result<Prepared, TaskError> {
        let handler = self.handlers.get(kind).ok_or_else(|| {
            TaskError::fatal(
                ErrorCode::UNKNOWN_KIND,
                format!(
                    "no handler for kind {kind:?}; this worker runs {:?}",
                    self.names()
                ),
            )
        })?;
        Arc::clone(handler).prepare(params, ctx)
    }
}
