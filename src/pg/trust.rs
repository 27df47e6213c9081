//! Trust in the tables sessiondb reads and writes (SPEC §2, a hostile database): code
//! that another role planted must never run with sessiondb's role.
//!
//! A row written into a table runs that table's triggers and rules, its column
//! defaults, its CHECK constraints and its index expressions, with the privileges of the
//! role that writes; a row read from a view runs the view's functions the same way. So,
//! before a step reads or writes a table of the target schema, every relation it uses —
//! sessiondb's own (`OWN_TABLES`) and the target tables (`sessions`, `session_state`,
//! an application's tables) — must be an ordinary table, and every function any of that
//! code calls must belong to a role sessiondb trusts: its own role, a superuser (the
//! built-ins), or, for a role that is not a superuser, a role it is a member of.
//! sessiondb's own tables must belong to such a role as well (a planted one could feed
//! it a false ledger). Anything else is refused with `untrusted_object`, naming the
//! relation, the function and its owner, before anything is read or written.

use postgres::GenericClient;

use crate::error::{Error, Result};

/// The tables sessiondb keeps in the target schema (its temporary ones live in
/// `pg_temp`, always named so, and are never looked up here).
const OWN_TABLES: [&str; 6] = [
    "sessiondb_schema_versions",
    "sessiondb_runs",
    "sessiondb_ledger",
    "sessiondb_verifications",
    "sessiondb_cutovers",
    "sessiondb_row_ledger",
];

/// Whether `owner` (a role's oid, as text in the query) is trusted by the current role.
const TRUSTED: &str = "(%O% = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user) \
     OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE oid = %O%) \
     OR (NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) \
         AND pg_catalog.pg_has_role(current_user, %O%, 'MEMBER')))";

fn trusted(owner: &str) -> String {
    TRUSTED.replace("%O%", owner)
}

/// Refuse when a relation sessiondb uses in `schema` (its own, and `tables`) is not an
/// ordinary table, when one of its own belongs to a role it does not trust, or when
/// code on any of them (a trigger, a rule, a default, a CHECK, an index expression)
/// calls a function of such a role. Relations that do not exist are fine: sessiondb
/// creates them.
pub fn check(c: &mut impl GenericClient, schema: &str, tables: &[&str]) -> Result<()> {
    let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    let sql = format!(
        "WITH rel AS (
           SELECT c.oid, c.relname, c.relkind, c.relowner,
                  pg_catalog.pg_get_userbyid(c.relowner) AS owner,
                  c.relname = ANY($3) AS own
             FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = $1
              AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
              AND (c.relname = ANY($3) OR c.relname = ANY($2))
         ),
         code AS (
           SELECT r.relname, 'a trigger' AS what, t.tgfoid AS fn FROM rel r
             JOIN pg_catalog.pg_trigger t ON t.tgrelid = r.oid AND NOT t.tgisinternal
           UNION ALL
           SELECT r.relname, 'a column default', d.refobjid FROM rel r
             JOIN pg_catalog.pg_attrdef a ON a.adrelid = r.oid
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
                  AND d.objid = a.oid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
           UNION ALL
           SELECT r.relname, 'a constraint', d.refobjid FROM rel r
             JOIN pg_catalog.pg_constraint k ON k.conrelid = r.oid
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass
                  AND d.objid = k.oid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
           UNION ALL
           SELECT r.relname, 'an index', d.refobjid FROM rel r
             JOIN pg_catalog.pg_index i ON i.indrelid = r.oid
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                  AND d.objid = i.indexrelid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
           UNION ALL
           SELECT r.relname, 'a rule', d.refobjid FROM rel r
             JOIN pg_catalog.pg_rewrite w ON w.ev_class = r.oid
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                  AND d.objid = w.oid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
         )
         SELECT r.relname, 'is not a table (relkind ' || r.relkind::text || ', owner ' || r.owner || ')'
           FROM rel r WHERE r.relkind NOT IN ('r', 'p')
         UNION ALL
         SELECT r.relname, 'is sessiondb''s own table but belongs to role ' || r.owner
           FROM rel r WHERE r.own AND r.relkind IN ('r', 'p') AND NOT {own_trusted}
         UNION ALL
         SELECT k.relname, 'runs ' || k.what || ' calling ' || p.oid::pg_catalog.regprocedure::text
                || ', owned by role ' || pg_catalog.pg_get_userbyid(p.proowner)
           FROM code k JOIN pg_catalog.pg_proc p ON p.oid = k.fn
          WHERE NOT {fn_trusted}
         ORDER BY 1, 2",
        own_trusted = trusted("r.relowner"),
        fn_trusted = trusted("p.proowner"),
    );
    let rows = c
        .query(&sql, &[&schema, &names, &&OWN_TABLES[..]])
        .map_err(|e| {
            Error::pg(
                "checking who owns the target's tables and their code",
                "",
                e,
            )
        })?;
    if rows.is_empty() {
        return Ok(());
    }
    let found: Vec<String> = rows
        .iter()
        .take(5)
        .map(|r| {
            format!(
                "{schema}.{} {}",
                r.get::<_, String>(0),
                r.get::<_, String>(1)
            )
        })
        .collect();
    Err(Error::UntrustedObject {
        message: format!(
            "{}{}: sessiondb would run another role's code with its own privileges; nothing was read or written",
            found.join("; "),
            if rows.len() > 5 {
                format!(" (and {} more)", rows.len() - 5)
            } else {
                String::new()
            }
        ),
    })
}
