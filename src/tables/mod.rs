//! What segments keeps on users' tables, kept in step with them: the typed
//! members views (`members_view`) and the response to users' DDL of
//! registered tables (`ddl`, run by the event triggers of
//! sql/ddl_events.sql, so that `ALTER TABLE` is never blocked).

pub mod ddl;
pub mod grants;
pub mod members_view;
pub mod traits_view;
