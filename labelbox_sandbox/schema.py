"""The GraphQL schema (SDL) of the operations the sandbox serves, as Labelbox serves them.

Written from the query texts of the Labelbox Python SDK 7.17.0, which is the only public description of
Labelbox's schema for these operations:

- `labelbox/schema/annotation_import.py` (`MEAPredictionImport`): `createModelErrorAnalysisPredictionImport`
  by `filePayload` or `fileUrl`, `modelErrorAnalysisPredictionImport(where: {modelRunId, name})`, selecting
  the import's fields (`id name modelRunId state progress inputFileUrl errorFileUrl statusFileUrl`);
- `labelbox/orm/query.py` `get_single` (`client.get_model_run`, `get_model`, `get_ontology`, `get_user`):
  `modelRun | model | ontology(where: {id: $param_0}) { <every field of the SDK's entity> }`, `user { … }`;
- `labelbox/schema/model_run.py` (`upsert_data_rows`, `upsert_labels`): the three registration mutations
  (each answers a task id) and `MEA…RegistrationTaskStatus(where: $where: WhereUniqueIdInput!)`.

Names the SDK never shows (the object type of a task status, the input types that only appear inline)
are named here; a client cannot see them unless it declares a variable of that type, and none does.
Type names a client can see and must spell right: `ID`, `String`, `Int`, `Upload`, `WhereUniqueIdInput`.
"""

from __future__ import annotations

from typing import Final

SDL: Final = '''
"""A file part of a GraphQL multipart request (graphql-multipart-request-spec)."""
scalar Upload
"""Any JSON value (an ontology's `normalized`, a model run's `trainingMetadata`)."""
scalar Json
"""An ISO 8601 timestamp."""
scalar DateTime

type Query {
  user: User!
  modelRun(where: WhereUniqueIdInput!): ModelRun
  model(where: WhereUniqueIdInput!): Model
  ontology(where: WhereUniqueIdInput!): Ontology
  modelErrorAnalysisPredictionImport(
    where: ModelErrorAnalysisPredictionImportWhereInput!
  ): ModelErrorAnalysisPredictionImport
  MEADataRowRegistrationTaskStatus(where: WhereUniqueIdInput!): MEARegistrationTaskStatus
  MEALabelRegistrationTaskStatus(where: WhereUniqueIdInput!): MEARegistrationTaskStatus
}

type Mutation {
  createModelErrorAnalysisPredictionImport(
    data: CreateModelErrorAnalysisPredictionImportInput!
  ): ModelErrorAnalysisPredictionImport!
  "Answers the id of the registration task."
  createMEAModelRunDataRowRegistrationTask(
    where: WhereUniqueIdInput!, data: MEAModelRunDataRowRegistrationInput!
  ): ID!
  createMEAModelRunLabelRegistrationTask(
    where: WhereUniqueIdInput!, data: MEAModelRunLabelRegistrationInput!
  ): ID!
  createMEAModelRunProjectLabelRegistrationTask(where: MEAModelRunProjectLabelRegistrationWhereInput!): ID!
}

input WhereUniqueIdInput {
  id: ID!
}

input ModelErrorAnalysisPredictionImportWhereInput {
  modelRunId: ID!
  name: String!
}

input FilePayloadInput {
  file: Upload!
  contentLength: Int!
}

input CreateModelErrorAnalysisPredictionImportInput {
  modelRunId: ID!
  name: String!
  filePayload: FilePayloadInput
  fileUrl: String
}

input MEAModelRunDataRowRegistrationInput {
  dataRowIds: [ID!]
  globalKeys: [ID!]
}

input MEAModelRunLabelRegistrationInput {
  labelIds: [ID!]!
}

input MEAModelRunProjectLabelRegistrationWhereInput {
  modelRunId: ID!
  projectId: ID!
}

enum ImportState {
  RUNNING
  FAILED
  FINISHED
}

type ModelErrorAnalysisPredictionImport {
  id: ID!
  name: String!
  modelRunId: ID!
  state: ImportState!
  progress: String
  inputFileUrl: String
  errorFileUrl: String
  statusFileUrl: String
  createdAt: DateTime
  updatedAt: DateTime
  createdBy: User
}

type ModelRun {
  id: ID!
  name: String!
  createdAt: DateTime!
  updatedAt: DateTime!
  "The id of the user who created the model run."
  createdBy: ID
  modelId: ID!
  trainingMetadata: Json
  modelAppId: ID
}

type Model {
  id: ID!
  name: String!
  ontologyId: ID!
  createdAt: DateTime
}

type Ontology {
  id: ID!
  name: String!
  description: String
  createdAt: DateTime!
  updatedAt: DateTime!
  mediaType: String
  normalized: Json!
  objectSchemaCount: Int!
  classificationSchemaCount: Int!
}

type User {
  id: ID!
  email: String
  name: String
  nickname: String
  picture: String
  createdAt: DateTime
  updatedAt: DateTime
  lastLoginAt: DateTime
  isViewer: Boolean
  isExternalUser: Boolean
}

type MEARegistrationTaskStatus {
  id: ID
  status: String!
  errorMessage: String
}
'''
