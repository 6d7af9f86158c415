//! `tandem kinds` (the shared catalog) lists exactly the kinds a worker
//! registers, each with the class the worker gives it: a kind added to the
//! worker but not to `tandem_shared::kind::catalog` (or the other way)
//! fails here.

use tandem_shared::kind::catalog;
use tandem_worker::KindTable;

#[test]
fn the_catalog_lists_every_kind_a_worker_registers_with_its_class() {
    let mut kinds = KindTable::with_builtins();
    kinds.add_test_kinds();
    let mut listed: Vec<&str> = catalog::catalog().iter().map(|k| k.kind).collect();
    listed.sort_unstable();
    assert_eq!(kinds.names(), listed);
    for info in catalog::catalog() {
        assert_eq!(kinds.class_of(info.kind), Some(info.class), "{}", info.kind);
    }
    let plain = KindTable::with_builtins();
    for info in catalog::catalog() {
        assert_eq!(
            plain.names().contains(&info.kind),
            !info.test_only,
            "{}: test_only says whether only workers with test_kinds run it",
            info.kind
        );
    }
}
