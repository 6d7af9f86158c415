//! The [`KindTable`]: the kinds a worker runs, by name, each with its
//! handler (types erased), for splittable kinds its split operations, and
//! the GPU paths (kernel modules, `cublas`) it runs on when a GPU worker
//! has them, from which a GPU worker says which kinds fall back to its
//! CPU. `KindTable::with_builtins` (in `kinds`) fills one with every kind this
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
    /// The GPU paths (kernel modules, `cublas`) each kind runs on when a
    /// GPU worker has them all; a kind not here runs on the CPU anywhere.
    gpu_paths: HashMap<&'static str, Vec<&'static str>>,
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
        self.gpu_paths.remove(H::Spec::KIND);
        self
    }

    /// Adds a compute kind.
    pub fn register_compute<C: Compute>(&mut self, kind: C) -> &mut Self {
        self.register(Computing(Arc::new(kind)))
            .runs_on_gpu_paths::<C::Spec>(C::MODULE.as_slice())
    }

    /// Says which GPU paths the registered kind `K` runs on when a GPU
    /// worker has them all (compute kinds say it through
    /// [`Compute::MODULE`]): a GPU worker that lacks one reports `K` as
    /// falling back to its CPU.
    pub fn runs_on_gpu_paths<K: KindSpec>(&mut self, paths: &[&'static str]) -> &mut Self {
        if paths.is_empty() {
            self.gpu_paths.remove(K::KIND);
        } else {
            self.gpu_paths.insert(K::KIND, paths.to_vec());
        }
        self
    }

    /// The kinds with a GPU path, sorted, split into those that run on a
    /// GPU with `has` paths (second) and those that fall back to its CPU
    /// (first).
    pub fn by_gpu_path(
        &self,
        has: impl Fn(&str) -> bool,
    ) -> (Vec<&'static str>, Vec<&'static str>) {
        let mut kinds: Vec<(&'static str, bool)> = self
            .gpu_paths
            .iter()
            .map(|(kind, paths)| (*kind, paths.iter().all(|p| has(p))))
            .collect();
        kinds.sort_unstable();
        let on_cpu = kinds
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(k, _)| *k)
            .collect();
        let on_gpu = kinds
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(k, _)| *k)
            .collect();
        (on_cpu, on_gpu)
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
            .runs_on_gpu_paths::<S::Spec>(S::MODULE.as_slice())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Which kinds a GPU worker runs on its CPU follows from the paths it
    /// lacks: the model kinds need the MLP kernels and cuBLAS, each
    /// compute kind its own module, the plain kinds none.
    #[test]
    fn kinds_fall_back_to_the_cpu_by_the_gpu_paths_they_need() {
        let kinds = KindTable::with_builtins();
        let (on_cpu, on_gpu) = kinds.by_gpu_path(|path| path != "cublas");
        assert_eq!(on_cpu, ["infer", "predict_batch", "train"]);
        assert_eq!(
            on_gpu,
            [
                "indicators",
                "monte_carlo",
                "patterns",
                "portfolio_opt",
                "risk"
            ]
        );
        let (on_cpu, on_gpu) = kinds.by_gpu_path(|path| path != "risk");
        assert_eq!(on_cpu, ["risk"]);
        assert_eq!(on_gpu.len(), 7);
        let (on_cpu, on_gpu) = kinds.by_gpu_path(|_| false);
        assert_eq!(on_cpu.len(), 8);
        assert!(on_gpu.is_empty());
        // A kind registered again as a plain handler needs no GPU path.
        let mut kinds = KindTable::with_builtins();
        kinds.register(CpuRisk);
        assert!(!kinds.by_gpu_path(|_| false).0.contains(&"risk"));
    }

    /// A service's own `risk` handler, without a GPU path.
    struct CpuRisk;

    impl Handler for CpuRisk {
        type Spec = tandem_shared::kind::risk::Risk;

        async fn run(
            &self,
            _params: <Self::Spec as KindSpec>::Params,
            _ctx: TaskContext,
        ) -> Result<<Self::Spec as KindSpec>::Output, TaskError> {
            Err(TaskError::fatal(ErrorCode::HANDLER_ERROR, "not run"))
        }
    }
}
