//! The plan's optimisation: filter leaves that only one condition uses are
//! folded into one filter (see `Planner::finish`), so that a scan computes
//! one aggregate per shared condition, not one per leaf.

use std::collections::HashMap;

use super::emit::join_sql;
use super::{CompiledBody, CompiledRule, Expr, Leaf};

pub(super) fn rule_exprs<'a>(rules: &'a mut [CompiledRule], out: &mut Vec<&'a mut Expr>) {
    for rule in rules {
        match &mut rule.body {
            CompiledBody::Expr(expr) => out.push(expr),
            CompiledBody::Rules(sub) => rule_exprs(sub, out),
        }
    }
}

pub(super) fn count_uses(expr: &Expr, uses: &mut [usize]) {
    match expr {
        Expr::Leaf(i) => uses[*i] += 1,
        Expr::All(items) | Expr::Any(items) => items.iter().for_each(|e| count_uses(e, uses)),
        Expr::Not(inner) => count_uses(inner, uses),
    }
}

pub(super) fn mark_used(expr: &Expr, used: &mut [bool]) {
    match expr {
        Expr::Leaf(i) => used[*i] = true,
        Expr::All(items) | Expr::Any(items) => items.iter().for_each(|e| mark_used(e, used)),
        Expr::Not(inner) => mark_used(inner, used),
    }
}

pub(super) fn remap(expr: &mut Expr, renumber: &[usize], has_not: &mut bool) {
    match expr {
        Expr::Leaf(i) => *i = renumber[*i],
        Expr::All(items) | Expr::Any(items) => {
            items.iter_mut().for_each(|e| remap(e, renumber, has_not))
        }
        Expr::Not(inner) => {
            *has_not = true;
            remap(inner, renumber, has_not)
        }
    }
}

/// The SQL of a filter leaf used only here, if `expr` is one.
pub(super) fn private_filter<'a>(
    expr: &Expr,
    leaves: &'a [Leaf],
    uses: &[usize],
) -> Option<&'a str> {
    match expr {
        Expr::Leaf(i) if uses.get(*i) == Some(&1) => match &leaves[*i] {
            Leaf::Filter(sql) => Some(sql),
            _ => None,
        },
        _ => None,
    }
}

pub(super) fn new_filter(
    sql: String,
    leaves: &mut Vec<Leaf>,
    index: &mut HashMap<Leaf, usize>,
) -> Expr {
    let leaf = Leaf::Filter(sql);
    if let Some(&i) = index.get(&leaf) {
        return Expr::Leaf(i); // the same expression exists: share it
    }
    leaves.push(leaf.clone());
    index.insert(leaf, leaves.len() - 1);
    Expr::Leaf(leaves.len() - 1)
}

/// Folds private filters bottom-up (see `Planner::finish`). New leaves are
/// private too, so folding goes on through nested conditions.
pub(super) fn fold(
    expr: &mut Expr,
    leaves: &mut Vec<Leaf>,
    index: &mut HashMap<Leaf, usize>,
    uses: &[usize],
) {
    let is_private = |expr: &Expr, leaves: &Vec<Leaf>| match expr {
        Expr::Leaf(i) if *i >= uses.len() => true, // made by this fold
        other => private_filter(other, leaves, uses).is_some(),
    };
    let sql_of = |expr: &Expr, leaves: &Vec<Leaf>| match expr {
        Expr::Leaf(i) => match &leaves[*i] {
            Leaf::Filter(sql) => sql.clone(),
            _ => unreachable!("only filters are folded"),
        },
        _ => unreachable!("only leaves are folded"),
    };
    match expr {
        Expr::Leaf(_) => {}
        Expr::Not(inner) => {
            fold(inner, leaves, index, uses);
            if is_private(inner, leaves) {
                let sql = format!("({}) IS NOT TRUE", sql_of(inner, leaves));
                *expr = new_filter(sql, leaves, index);
            }
        }
        Expr::All(_) | Expr::Any(_) => {
            let operator = if matches!(expr, Expr::All(_)) {
                "AND"
            } else {
                "OR"
            };
            let items = match expr {
                Expr::All(items) | Expr::Any(items) => items,
                _ => unreachable!(),
            };
            for item in items.iter_mut() {
                fold(item, leaves, index, uses);
            }
            let (private, shared): (Vec<Expr>, Vec<Expr>) =
                items.drain(..).partition(|e| is_private(e, leaves));
            *items = shared;
            match private.len() {
                0 => {}
                1 => items.extend(private),
                _ => {
                    let sqls: Vec<String> = private.iter().map(|e| sql_of(e, leaves)).collect();
                    items.push(new_filter(join_sql(&sqls, operator), leaves, index));
                }
            }
            if items.len() == 1 {
                *expr = items.pop().unwrap();
            }
        }
    }
}

pub(super) fn collect_segment_leaves(rules: &[CompiledRule], leaves: &[Leaf], out: &mut Vec<i64>) {
    fn walk(expr: &Expr, leaves: &[Leaf], out: &mut Vec<i64>) {
        match expr {
            Expr::Leaf(i) => {
                if let Leaf::Segment(id) = leaves[*i] {
                    out.push(id);
                }
            }
            Expr::All(items) | Expr::Any(items) => items.iter().for_each(|e| walk(e, leaves, out)),
            Expr::Not(inner) => walk(inner, leaves, out),
        }
    }
    for rule in rules {
        match &rule.body {
            CompiledBody::Expr(expr) => walk(expr, leaves, out),
            CompiledBody::Rules(sub) => collect_segment_leaves(sub, leaves, out),
        }
    }
}
