//! Which columns a definition reads: a segment is evaluated with its
//! owner's privileges, so whoever saves a definition must be able to read
//! them all.

use crate::catalog::{Entity, Table};
use crate::definition::{
    Condition, ConditionKind, Definition, Operand, RelatedMeasure, Rule, RuleBody,
};

/// Every (relation, column) a definition reads, the entity's key included:
/// whoever saves a definition must be able to read them all, since the
/// segment is evaluated with its owner's privileges.
pub fn columns_read(definition: &Definition, entity: &Entity) -> Vec<(String, String)> {
    fn walk(
        condition: &Condition,
        entity: &Entity,
        table: &Table,
        out: &mut Vec<(String, String)>,
    ) {
        match &condition.kind {
            ConditionKind::All(items) | ConditionKind::Any(items) => {
                items.iter().for_each(|c| walk(c, entity, table, out))
            }
            ConditionKind::Not(inner) => walk(inner, entity, table, out),
            ConditionKind::Attribute(test) => {
                out.push((table.relation_sql.clone(), test.column.clone()));
                if let Operand::StepRef { column, .. } = &test.value {
                    out.push((table.relation_sql.clone(), column.clone()));
                }
            }
            ConditionKind::Related(test) => {
                let Some(related) = entity.related(&test.related) else {
                    return;
                };
                let rel = related.table.relation_sql.clone();
                out.push((rel.clone(), related.foreign_key.clone()));
                // A path reads every table on it: its key and foreign key.
                for via in super::path_tables(entity, related) {
                    let via_rel = via.table.relation_sql.clone();
                    out.push((via_rel.clone(), via.foreign_key.clone()));
                    if let Some(key) = &via.primary_key {
                        out.push((via_rel, key.clone()));
                    }
                }
                if let (Some(_), Some(time)) = (&test.within, &related.time_column) {
                    out.push((rel.clone(), time.clone()));
                }
                if let RelatedMeasure::Aggregate {
                    attribute: Some(attribute),
                    ..
                } = &test.measure
                {
                    out.push((rel.clone(), attribute.clone()));
                }
                if let Some(filter) = &test.filter {
                    walk(filter, entity, &related.table, out);
                }
                match &test.measure {
                    RelatedMeasure::Every(condition) => {
                        walk(condition, entity, &related.table, out)
                    }
                    RelatedMeasure::Sequence(steps) => {
                        if let Some(time) = &related.time_column {
                            out.push((rel.clone(), time.clone()));
                        }
                        for step in steps {
                            walk(&step.filter, entity, &related.table, out);
                        }
                    }
                    RelatedMeasure::Exists(_) | RelatedMeasure::Aggregate { .. } => {}
                }
            }
            ConditionKind::Trait(test) => {
                let definition = entity
                    .trait_def(&test.name)
                    .and_then(|t| crate::definition::TraitDefinition::parse(&t.definition).ok());
                let Some(definition) = definition else {
                    return;
                };
                // The trait reads what a related condition over its rows
                // reads, and its attribute (and time column, for first
                // and last).
                let scope = Condition {
                    path: condition.path.clone(),
                    kind: ConditionKind::Related(definition.scope()),
                };
                walk(&scope, entity, table, out);
                if let Some(related) = entity.related(&definition.related) {
                    let rel = related.table.relation_sql.clone();
                    if let Some(attribute) = &definition.attribute {
                        out.push((rel.clone(), attribute.clone()));
                    }
                    if let Some(time) = &related.time_column {
                        out.push((rel, time.clone()));
                    }
                }
            }
            ConditionKind::Segment(_) => {}
        }
    }
    let mut out = vec![(entity.table.relation_sql.clone(), entity.key_column.clone())];
    for rule_condition in definition.rules.iter().flat_map(rule_conditions) {
        walk(rule_condition, entity, &entity.table, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

pub(super) fn rule_conditions(rule: &Rule) -> Vec<&Condition> {
    match &rule.body {
        RuleBody::Where(condition) => vec![condition],
        RuleBody::Rules(sub) => sub.iter().flat_map(rule_conditions).collect(),
    }
}
