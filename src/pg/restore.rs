//! Telling a restore from a user's write. `pg_dump` saves the extension's
//! tables (they are marked with `pg_extension_config_dump`) and `pg_restore`
//! copies them back with `COPY segments.<table> FROM stdin`, in the order of
//! their foreign keys, after `CREATE EXTENSION` made them empty. The
//! lifecycle triggers of `segments.segment` must then take each row as it
//! was saved: not validate it against tables restored later, not reset the
//! columns the extension maintains, not record history that is restored
//! from its own table, and not install capture triggers that the dump
//! creates itself.
//!
//! A restore is recognised by the statement the client sent, not by its
//! text: the active portal runs a `COPY ... FROM` into a table of schema
//! `segments`, and the role running it (outside any SECURITY DEFINER
//! function) is a superuser, as restoring an untrusted extension requires.
//! An editor's `COPY segments.segment FROM` is an ordinary write.

use pgrx::pg_sys;
use pgrx::PgList;

/// Whether the current statement is a superuser's `COPY segments.<table>
/// FROM ...`: a restore.
pub fn restoring() -> bool {
    // SAFETY: reads backend globals and the active portal's planned
    // statements, checking each node's tag before the cast; the relation
    // is looked up without a lock (the COPY itself holds one).
    unsafe {
        if !pg_sys::superuser_arg(pg_sys::GetOuterUserId()) {
            return false;
        }
        let portal = pg_sys::ActivePortal;
        if portal.is_null() || (*portal).stmts.is_null() {
            return false;
        }
        let statements = PgList::<pg_sys::Node>::from_pg((*portal).stmts);
        if statements.len() != 1 {
            return false;
        }
        let Some(node) = statements.get_ptr(0) else {
            return false;
        };
        if (*node).type_ != pg_sys::NodeTag::T_PlannedStmt {
            return false;
        }
        let utility = (*node.cast::<pg_sys::PlannedStmt>()).utilityStmt;
        if utility.is_null() || (*utility).type_ != pg_sys::NodeTag::T_CopyStmt {
            return false;
        }
        let copy = utility.cast::<pg_sys::CopyStmt>();
        if !(*copy).is_from || (*copy).relation.is_null() {
            return false;
        }
        let relation = pg_sys::RangeVarGetRelidExtended(
            (*copy).relation,
            pg_sys::NoLock as i32,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        );
        let schema = pg_sys::get_namespace_oid(c"segments".as_ptr(), true);
        relation != pg_sys::InvalidOid
            && schema != pg_sys::InvalidOid
            && pg_sys::get_rel_namespace(relation) == schema
    }
}
